"""Faults under load, end to end (the session's shared app, last of its modules: real `serve run`,
HTTP, vLLM CPU build, the official openai client). While a bounded load of text, image and video
requests (streamed and not, short ones and long streams) runs, one Preprocessor replica and then
one Engine replica are killed by actor id (``ray.kill`` on the replica's actor handle, found among
Serve's named actors); each kill must find requests in flight (media ones for the Preprocessor).

Asserted: every request ends cleanly — it succeeds with all the tokens it asked for (Serve may
send a call to the dead replica's successor), or gets a 5xx status, or (a stream already under way) an
error event and ``[DONE]`` — and none runs past the app's request deadline
(``http_options.request_timeout_s``) without an answer; Serve replaces both replicas, the killed
engine leaves no vLLM engine-core process behind, and afterwards every request succeeds. The
counts are printed (ok, 5xx by code, stream errors, hung)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tests import serve_replicas

pytestmark = pytest.mark.e2e
MODEL = "qwen2.5-vl-tiny"
WORKERS = 6  # concurrent clients; each waits PAUSE_S between its requests
LONG_WORKERS = 2  # of them send only long streams, the others cycle through the short kinds
PAUSE_S = 0.05
MAX_REQUESTS = 3000
MAX_TOKENS = 96
LONG_TOKENS = 1024  # seconds of generation: whenever the engine is killed, some of these are under way
SHORT_KINDS = ("text", "text-stream", "image", "image-stream", "video")
KINDS = (*SHORT_KINDS, "long-stream")
SLACK_S = 15.0  # a request unanswered this long past the deadline counts as hung


def _png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (112, 140, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Load(threading.Thread):
    """WORKERS clients in a loop until stopped. Each request: (kind, outcome, start, end) by
    ``time.time()`` (the clock the kill is stamped with); a success with other than the tokens asked
    for (a retry that repeated output) is an outcome of its own."""

    def __init__(self, base_url: str, timeout: float, video: str | None = None):
        super().__init__(daemon=True)
        self.base_url, self.timeout, self.video = base_url, timeout, video
        self.records: list[tuple[str, str, float, float]] = []
        self._halt = threading.Event()
        self._images = [_png(i) for i in range(16)]

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout + 60)

    def run(self) -> None:
        asyncio.run(self._main())

    def content(self, i: int, kinds: tuple[str, ...] = KINDS) -> tuple[str, object]:
        kind = kinds[i % len(kinds)]
        media = {"image": {"type": "image_url", "image_url": {"url": self._images[i % 16]}},
                 "video": {"type": "video", "video": self.video}}.get(kind.split("-")[0])
        return kind, [media, {"type": "text", "text": f"what {i}"}] if media else f"say {i}"

    async def _main(self) -> None:
        import openai

        client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0,
                                    timeout=self.timeout)
        counter = iter(range(MAX_REQUESTS))

        async def worker(kinds: tuple[str, ...]) -> None:
            for i in counter:
                if self._halt.is_set():
                    return
                kind, content = self.content(i, kinds)
                t0 = time.time()
                outcome = await one(client, content, stream=kind.endswith("stream"), tokens=_tokens(kind))
                self.records.append((kind, outcome, t0, time.time()))
                await asyncio.sleep(PAUSE_S)

        await asyncio.gather(*(worker(("long-stream",) if w < LONG_WORKERS else SHORT_KINDS) for w in range(WORKERS)))


def _tokens(kind: str) -> int:
    return LONG_TOKENS if kind.startswith("long") else MAX_TOKENS


async def one(client, content, stream: bool, tokens: int = MAX_TOKENS) -> str:
    import openai

    kw = dict(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=tokens, temperature=0,
              extra_body={"ignore_eos": True})
    try:
        if stream:
            s = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
            usage = None
            async for chunk in s:
                usage = chunk.usage or usage
            got = usage.completion_tokens if usage else None
        else:
            got = (await client.chat.completions.create(**kw)).usage.completion_tokens
        return "ok" if got == tokens else f"ok with {got} of {tokens} tokens"
    except openai.APITimeoutError:
        return "hung"
    except openai.APIStatusError as exc:
        return f"http {exc.status_code}"
    except openai.APIConnectionError as exc:
        return f"connection error ({type(exc.__cause__).__name__})"
    except openai.APIError:
        return "stream error event"  # the 200 was sent; the error came in-band, then [DONE]


def _counts(records, by_kind: bool = False) -> str:
    c = Counter(f"{k}: {o}" if by_kind else o for k, o, _, _ in records)
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def _all_succeed(base_url: str, video: str, n: int = 8) -> Counter:
    load = Load(base_url, timeout=120, video=video)

    async def main():
        import openai

        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        kinds = [load.content(i) for i in range(n)]
        return await asyncio.gather(*(one(client, c, stream=k.endswith("stream"), tokens=_tokens(k))
                                      for k, c in kinds))

    return Counter(asyncio.run(main()))


@pytest.mark.timeout(1200)
def test_killing_a_preprocessor_then_an_engine_replica_under_load(served, media_root, figures):
    from serve_app.dev import synth_media

    video = media_root / "faults.mp4"
    # 15 s: 150 frames to decode for the 30 it samples, so media work is under way at the kill
    video.write_bytes(synth_media.video(480, 360, 150, fps=10))
    deadline_s = float(served.config["http_options"]["request_timeout_s"])
    before = serve_replicas.replicas(served)
    assert set(before) == {"Ingress", "Preprocessor", "Engine"}, before
    assert _all_succeed(served.base_url, str(video)) == Counter({"ok": 8})

    load = Load(served.base_url, timeout=deadline_s + SLACK_S, video=str(video))
    kills: dict[str, tuple[float, str]] = {}  # deployment: (when the kill had happened, actor id)
    replaced: dict[str, float] = {}
    load.start()
    try:
        for deployment in ("Preprocessor", "Engine"):
            time.sleep(5)
            victim = serve_replicas.kill_replica(served, deployment)
            kills[deployment] = (victim["killed_at"], victim["actor_id"])
            serve_replicas.wait_replicas(served, {deployment: 1}, exclude={a for _, a in kills.values()},
                                         timeout=deadline_s)
            replaced[deployment] = time.time()
        time.sleep(5)
    finally:
        load.stop()
    assert not load.is_alive(), "the load's requests did not end"
    after = _all_succeed(served.base_url, str(video))

    records = load.records
    t_first = kills["Preprocessor"][0]
    lines = [f"faults: {len(records)} requests by {WORKERS} clients ({LONG_WORKERS} sending streams of {LONG_TOKENS} "
             f"tokens, the others {', '.join(SHORT_KINDS)} of {MAX_TOKENS}), deadline {deadline_s:.0f} s: "
             f"{_counts(records)}"]
    lines.append(f"faults: before the first kill: {_counts([r for r in records if r[3] < t_first])}")
    in_flight = {}
    for d, (t_kill, actor_id) in kills.items():
        in_flight[d] = [r for r in records if r[2] <= t_kill <= r[3]]
        down = [r for r in records if t_kill <= r[2] <= replaced[d]]
        lines.append(f"faults: {d} replica {actor_id} killed with {len(in_flight[d])} requests in flight "
                     f"({_counts(in_flight[d], by_kind=True)}); replaced after {replaced[d] - t_kill:.0f} s, requests sent "
                     f"meanwhile: {_counts(down)}")
    lines.append(f"faults: hung {Counter(o for _, o, _, _ in records)['hung']}, slowest "
                 f"{max(r[3] - r[2] for r in records):.1f} s; after recovery: {_counts([('', o, 0, 0) for o in after.elements()])}")
    figures.extend(lines)
    print("\n".join(lines))

    outcomes = Counter(o for _, o, _, _ in records)
    assert outcomes["hung"] == 0
    unclean = {o: n for o, n in outcomes.items() if o not in ("ok", "stream error event") and not o.startswith("http 5")}
    assert not unclean, f"requests that neither succeeded (exactly once) nor ended with a clean 5xx: {unclean}"
    assert max(r[3] - r[2] for r in records) <= deadline_s + SLACK_S
    assert all(r[1] == "ok" for r in records if r[3] < t_first)
    for d in kills:
        assert in_flight[d], f"no request was in flight when the {d} replica was killed: the kill proved nothing"
    assert any(k.startswith(("image", "video")) for k, *_ in in_flight["Preprocessor"])
    assert after == Counter({"ok": 8})

    now = serve_replicas.replicas(served)
    for d, (_, actor_id) in kills.items():
        assert actor_id not in {r["actor_id"] for r in now[d]} and len(now[d]) >= 1, (d, now[d])
    assert now["Ingress"] == before["Ingress"]  # untouched
    assert len(serve_replicas.engine_cores(served)) == len(now["Engine"]), "a killed engine left its engine core"
