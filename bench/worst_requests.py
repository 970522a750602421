#!/usr/bin/env python
"""The worst requests we could construct, sent to the CPU build: the time to each answer and the peak
memory of every replica while it ran (issue #14, "budgets before work").

    .venv/bin/python bench/worst_requests.py                # serve run of configs/local.yaml, every case (~5 min)
    .venv/bin/python bench/worst_requests.py --grammar      # also: schema compile time in xgrammar (~5 min more)

Starts `serve run` on configs/local.yaml (production's Ray environment: HAProxy ingress, Serve's
throughput mode; loopback allow-listed for this script's own slow-source server, nothing else
reachable) in its own process group on a free 127.0.0.1 port, and stops it at the end. Each case is
one request (or one burst) sent alone; a background thread samples the RSS of the Ingress,
Preprocessor and Engine replicas (the vLLM CPU engine core runs inside the Engine replica) every 10
ms, and the table shows each replica's peak above its level before the request. Every body is
generated here; the largest is 65 MiB.

--grammar compiles schemas with xgrammar directly (what vLLM does before a structured-output
request's first token), with the tiny model's vocabulary and with a synthetic 151,000-token
vocabulary of word pieces (the production model's vocabulary size; compile work grows with it), one
thread, no cache: accepted schemas at the edge of every budget and refused ones above them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import pathlib
import re
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench.servers import ServerProcess, free_port  # noqa: E402
from serve_app.dev.slow_source import Trickle  # noqa: E402

MODEL = "qwen2.5-vl-tiny"
MiB = 1 << 20
REPLICAS = ("Ingress", "Preprocessor", "Engine")


# ----------------------------------------------------------------------------- media
def _png(w: int = 56, h: int = 56) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def webp_declaring(w: int, h: int) -> bytes:
    """A 64 x 48 lossy WebP whose header declares w x h."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(buf, format="WEBP")
    data = bytearray(buf.getvalue())
    data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    return bytes(data)


def _gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    head, blocks = data[:pos], []
    while data[pos] != 0x3B:
        start = pos
        if data[pos] == 0x21:
            pos += 2
        else:
            lflags = data[pos + 9]
            pos += 10 + (3 * 2 ** ((lflags & 7) + 1) if lflags & 0x80 else 0) + 1
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
        blocks.append(data[start:pos])
    return head, blocks


def delta_gif(side: int, frames: int) -> bytes:
    """An animated GIF: one side x side frame, then frames - 1 copies of a one-pixel change; every
    frame the decoder produces is the full canvas."""
    from PIL import Image

    a = Image.new("P", (side, side), 0)
    a.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    b = a.copy()
    b.putpixel((side // 2, side // 2), 1)
    buf = io.BytesIO()
    a.save(buf, "GIF", save_all=True, append_images=[b], duration=100, loop=0, optimize=False)
    head, blocks = _gif_blocks(buf.getvalue())
    return head + b"".join(blocks) + b"".join(blocks[-2:] * (frames - 2)) + b"\x3b"


# ----------------------------------------------------------------------------- server
class Server:
    def __init__(self, log_path: pathlib.Path):
        import yaml

        from serve_app.ray_env import THROUGHPUT_ENV

        self.port = free_port()
        cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
        cfg["http_options"]["port"] = self.port
        cfg["applications"][0]["args"].setdefault("media", {})["allow_hosts"] = ["127.0.0.1/32"]
        self.config = log_path.with_suffix(".yaml")
        self.config.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local", **THROUGHPUT_ENV,
                   RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
                   VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1")
        serve = pathlib.Path(sys.executable).parent / "serve"
        # its own process group and marker: stop() leaves nothing of this server behind
        self.server = ServerProcess([str(serve), "run", str(self.config)], env, log_path,
                                    f"http://127.0.0.1:{self.port}")
        self.proc = self.server.proc
        self.base = self.server.base_url

    def wait_ready(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; see {self.server.log_path}")
            try:
                ok = httpx.get(f"{self.base}/v1/models", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and set(self.replicas()) == set(REPLICAS):
                self._check_port_is_ours()
                return
            time.sleep(1)
        raise TimeoutError(f"not ready after {timeout}s; see {self.server.log_path}")

    def _check_port_is_ours(self) -> None:
        """HAProxy listens with SO_REUSEPORT: another Serve on this box that took the same port would
        get a share of these requests (and answer them with its own code). Refuse to measure then."""
        import psutil

        owners = {c.pid for c in psutil.net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port}
        foreign = {p for p in owners if p is not None and _sid(p) != self.proc.pid}
        if foreign:
            raise RuntimeError(f"port {self.port} is also served by processes {sorted(foreign)}; rerun")

    def replicas(self) -> dict[str, int]:
        """pid of each replica this server started (its own process group only)."""
        import psutil

        out = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) != self.proc.pid:
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
            except (psutil.Error, OSError):
                continue
            for name in REPLICAS:
                if f"ServeReplica:qwen-vl:{name}" in cmd:
                    out[name] = p.pid
        return out

    def stop(self) -> None:
        self.server.stop(grace_s=60)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class RssSampler:
    def __init__(self, pids: dict[str, int], every_s: float = 0.01):
        import psutil

        self.procs = {n: psutil.Process(p) for n, p in pids.items()}
        self.every_s = every_s
        self.base: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()

    def _rss(self) -> dict[str, float]:
        out = {}
        for n, p in self.procs.items():
            try:
                out[n] = p.memory_info().rss / MiB
            except Exception:  # noqa: BLE001 - a replica that went away shows as missing
                pass
        return out

    def __enter__(self):
        samples = [self._rss() for _ in range(5)]
        self.base = {n: statistics.median(s[n] for s in samples if n in s) for n in self.procs}
        self.peak = dict(self.base)

        def run():
            while not self._stop.is_set():
                for n, v in self._rss().items():
                    self.peak[n] = max(self.peak.get(n, 0.0), v)
                self._stop.wait(self.every_s)
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)  # memory freed or still held just after the answer
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    body: dict | bytes | None = None
    max_tokens: int = 2
    burst: int = 0  # > 0: that many slow-source requests first, then this one
    chunked: bool = False
    result: dict = field(default_factory=dict)


def chat(content, **extra) -> dict:
    return {"model": MODEL, "max_tokens": extra.pop("max_tokens", 2),
            "messages": [{"role": "user", "content": content}], **extra}


def cases(trickle: Trickle) -> list[Case]:
    png = data_uri(_png(), "image/png")
    huge = data_uri(webp_declaring(16383, 6103), "image/webp")  # 99.99 MP, under media.max_image_pixels
    gif = data_uri(delta_gif(2048, 2000), "image/gif")  # 200 s at 10 fps of 2048 x 2048 frames
    text = {"type": "text", "text": "describe"}
    img = lambda url, **o: {"type": "image_url", "image_url": {"url": url}, **o}  # noqa: E731
    schema = lambda s: {"type": "json_schema", "json_schema": {"name": "s", "schema": s}}  # noqa: E731
    big_text = "word " * (63 * MiB // 5)
    return [
        Case("baseline: one 56x56 PNG", chat([img(png), text])),
        Case("animated GIF as video (2000 frames of 2048², 1.6 MB), default sampling",
             chat([{"type": "video", "video": gif}, text])),
        Case("the same GIF, nframes 4 (within every budget: decoded)",
             chat([{"type": "video", "video": gif, "nframes": 4}, text])),
        Case("32 WebPs declaring 99.99 MP", chat([img(huge) for _ in range(32)] + [text])),
        Case("4 WebPs declaring 99.99 MP (within limit_mm_per_prompt)", chat([img(huge) for _ in range(4)] + [text])),
        Case("1 WebP declaring 99.99 MP (fits the token budget: decoded)", chat([img(huge), text])),
        Case("resized_height x resized_width 4000 x 3200", chat([img(png, resized_height=4000, resized_width=3200)])),
        Case("768-frame list, resized 280 x 280", chat([{"type": "video", "video": [png] * 768,
                                                          "resized_height": 280, "resized_width": 280}])),
        Case("768-frame list of 56x56 PNGs", chat([{"type": "video", "video": [png] * 768}])),
        Case("json_schema: 100k-string enum", chat("hi", response_format=schema({"enum": [f"v{i}" for i in range(100_000)]}))),
        Case("json_schema: pattern a{10000} (38 bytes)", chat("hi", response_format=schema({"type": "string", "pattern": "a{10000}"}))),
        Case("json_schema: maxLength 256", chat("hi", response_format=schema({"type": "string", "maxLength": 256}))),
        Case("json_schema: objects nested 40 deep (1 KB)", chat("hi", response_format=schema(_nested_objects(40)))),
        Case("json_schema: maxLength 64 (at the budget: compiled)", chat("hi", max_tokens=4,
             response_format=schema({"type": "string", "maxLength": 64}))),
        Case("65 MiB body (Content-Length over the cap)", b"x" * (65 * MiB)),
        Case("65 MiB body, chunked (no Content-Length)", b"x" * (65 * MiB), chunked=True),
        Case("63 MiB data: URI (47 MiB decoded; cap 32 MiB)", chat([img("data:image/png;base64," + "A" * (63 * MiB))])),
        Case("63 MiB of text and one image", chat([img(png), {"type": "text", "text": big_text}])),
        Case("63 MiB of text only", chat(big_text)),
        Case("4 URLs trickling 1 byte / 5 s", chat([img(trickle.url(i)) for i in range(4)] + [text])),
        Case("a data-URI image behind 24 trickling requests", chat([img(png), text]), burst=24),
    ]


def _nested_objects(levels: int) -> dict:
    s: dict = {"type": "integer"}
    for _ in range(levels):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s


async def run_case(server: Server, pids: dict[str, int], case: Case, trickle: Trickle) -> None:
    import httpx

    body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=server.base, timeout=600) as http:
        burst = []
        if case.burst:
            burst = [asyncio.ensure_future(http.post("/v1/chat/completions",
                                                     json=chat([{"type": "image_url", "image_url": {"url": trickle.url(i)}}])))
                     for i in range(case.burst)]
            await asyncio.sleep(2.0)
        with RssSampler(pids) as rss:
            t0 = time.monotonic()
            if case.chunked:
                async def gen():
                    for i in range(0, len(body), MiB):
                        yield body[i:i + MiB]
                r = await http.post("/v1/chat/completions", content=gen(), headers=headers)
            else:
                r = await http.post("/v1/chat/completions", content=body, headers=headers)
            took = time.monotonic() - t0
        for f in burst:
            await f
    try:
        err = r.json().get("error") or {}
        message = err.get("message") or f"{r.json()['usage']['completion_tokens']} tokens"
    except (ValueError, KeyError, TypeError):
        message = r.text[:200]
    case.result = {"status": r.status_code, "seconds": round(took, 3), "message": message[:300],
                   "peak_mib_above_before": {n: round(rss.peak[n] - rss.base[n]) for n in rss.base},
                   "peak_mib": {n: round(rss.peak[n]) for n in rss.base}, "body_bytes": len(body)}


def where(status: int, message: str) -> str:
    if status == 413:
        return "ingress (body cap)"
    if "grammar states" in message or "json_schema" in message or "limit_mm" in message or "need at least" in message:
        return "ingress"
    if "at most 4 images" in message or "cap of" in message or "is not served" in message:
        return "ingress"
    if "would take" in message or "too slow" in message or "data: URI" in message or "decod" in message:
        return "preprocessor"
    if "maximum model length" in message or "context length" in message:
        return "engine (vLLM)"
    return "answered" if status == 200 else "?"


def table(results: list[Case]) -> str:
    lines = ["| request | answer | where | time to answer | peak RSS above before: ingress / preprocessor / engine (MiB) |",
             "|---|---|---|---|---|"]
    for c in results:
        r = c.result
        p = r["peak_mib_above_before"]
        lines.append(f"| {c.name} | {r['status']} | {where(r['status'], r['message'])} | {r['seconds']:.2f} s | "
                     f"{p.get('Ingress', '?')} / {p.get('Preprocessor', '?')} / {p.get('Engine', '?')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- grammar compile
def synthetic_vocab(n: int = 151_000) -> list[str]:
    import random
    import string

    rng = random.Random(0)
    alpha = string.ascii_letters + string.digits + string.punctuation
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice([2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 12])
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(k))
        r = rng.random()
        if r < 0.45:
            w = " " + w
        elif r < 0.55:
            w = w.capitalize()
        elif r < 0.65:
            w = "".join(rng.choice(alpha) for _ in range(k))
        words.add(w)
    return [chr(i) for i in range(256)] + sorted(words)


def grammar_table() -> str:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from serve_app.api.budgets import check_json_schema
    from serve_app.app_config import ServingSection
    from serve_app.dev import tiny_model
    from serve_app.errors import InvalidRequestError

    tok = AutoTokenizer.from_pretrained(str(tiny_model.ensure()))
    vocab = synthetic_vocab()
    compilers = {
        "tiny vocab (1,046)": xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok)),
                                                  max_threads=1, cache_enabled=False),
        "synthetic 151k vocab": xgr.GrammarCompiler(
            xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, stop_token_ids=[len(vocab) - 1]),
            max_threads=1, cache_enabled=False),
    }

    def obj(props):
        return {"type": "object", "properties": props, "required": list(props)}

    schemas = [
        ("1000 enum values", {"enum": [f"v{i}" for i in range(1000)]}),
        ("arrays nested 63 deep", _nested_arrays(63)),
        ("1000 optional properties (1002 objects)", {"type": "object",
                                                      "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}),
        ("pattern a{1024}", {"type": "string", "pattern": "a{1024}"}),
        ("pattern [a-z]{1,64} in an object", obj({"k": {"type": "string", "pattern": "[a-z]{1,64}"}})),
        ("maxLength 64 in an object", obj({"k": {"type": "string", "maxLength": 64}})),
        ("16 x format email", obj({f"k{i}": {"type": "string", "format": "email"} for i in range(16)})),
        ("3 x UUID pattern", obj({f"k{i}": {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                             "[0-9a-f]{4}-[0-9a-f]{12}$"} for i in range(3)})),
        ("enum 20k", {"enum": [f"v{i}" for i in range(20_000)]}),
        ("objects nested 200 deep", _nested_objects(200)),
        ("pattern a{4096}", {"type": "string", "pattern": "a{4096}"}),
        ("maxLength 256 in an object", obj({"k": {"type": "string", "maxLength": 256}})),
        ("32 x format email", obj({f"k{i}": {"type": "string", "format": "email"} for i in range(32)})),
    ]
    serving = ServingSection()
    lines = ["| schema | bytes | this server | " + " | ".join(f"compile, {k}" for k in compilers) + " |",
             "|---|---|---|" + "---|" * len(compilers)]
    for name, s in schemas:
        text = json.dumps(s, separators=(",", ":"))
        try:
            check_json_schema(s, serving)
            verdict = "accepted"
        except InvalidRequestError as e:
            key = re.search(r"serving\.max_json_schema_\w+", e.message)
            verdict = f"400: {key[0] if key else 'serving.max_json_schema_bytes'}"
        times = []
        for comp in compilers.values():
            t0 = time.process_time()
            comp.compile_json_schema(text, any_whitespace=True)
            times.append(f"{time.process_time() - t0:.3f} s")
        lines.append(f"| {name} | {len(text)} | {verdict} | " + " | ".join(times) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def _nested_arrays(levels: int) -> dict:
    s: dict = {"type": "string"}
    for _ in range(levels):
        s = {"type": "array", "items": s}
    return s


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    ap.add_argument("--grammar", action="store_true", help="also time schema compiles in xgrammar")
    ap.add_argument("--no-serve", action="store_true", help="only the grammar table")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = ap.parse_args(argv)
    out: dict = {"load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    if not args.no_serve:
        logs = ROOT / "build" / "bench-logs"
        logs.mkdir(parents=True, exist_ok=True)
        server = Server(logs / f"worst-requests-{time.strftime('%Y%m%d-%H%M%S')}.log")
        trickle = Trickle()
        try:
            t0 = time.monotonic()
            server.wait_ready()
            print(f"serving after {time.monotonic() - t0:.0f} s", flush=True)
            pids = server.replicas()
            print(f"replicas: {pids}", flush=True)
            done = []
            for case in cases(trickle):
                if args.only and args.only not in case.name:
                    continue
                asyncio.run(run_case(server, pids, case, trickle))
                r = case.result
                print(f"{case.name}: {r['status']} in {r['seconds']:.2f} s, peak above before (MiB) "
                      f"{r['peak_mib_above_before']}: {r['message'][:140]}", flush=True)
                done.append(case)
                pids = server.replicas()  # a replica that died would be replaced: the table would show it
            out["cases"] = [{"name": c.name, **c.result} for c in done]
            out["replicas_after"] = pids
            print("\n" + table(done))
        finally:
            trickle.close()
            server.stop()
    if args.grammar or args.no_serve:
        out["grammar"] = grammar_table()
        print("\n" + out["grammar"])
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
