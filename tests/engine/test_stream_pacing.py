"""Stream pacing: merged deltas, nothing lost, first and last never delayed (pure, fake clock)."""

from __future__ import annotations

import asyncio

from serve_app.api.responses import ChunkStream, CompletionAccumulator
from serve_app.engine.contract import ChoiceDelta, Delta
from serve_app.engine.stream_pacing import paced


def _delta(tokens, *, index=0, finished=False, logprobs=False, prompt=7):
    choice = ChoiceDelta(index, "".join(f"<{t}>" for t in tokens), len(tokens), "length" if finished else None,
                         token_ids=list(tokens))
    if logprobs:
        choice.logprobs = [{"token": f"<{t}>", "logprob": -1.0, "top_logprobs": []} for t in tokens]
    return Delta([choice], prompt, finished)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def _source(items, clock, step):
    for d in items:
        clock.t += step
        yield d


def _run(items, interval, step):
    clock = _Clock()

    async def go():
        return [d async for d in paced(_source(items, clock, step), interval, clock=clock)]

    return asyncio.run(go())


def test_first_and_last_sent_at_once_and_middle_merged():
    # Binary-exact times: a token every 1/64 s, an interval of 5/64 s.
    items = [_delta([i]) for i in range(9)] + [_delta([9], finished=True)]
    out = _run(items, interval=5 / 64, step=1 / 64)
    assert [d.choices[0].token_ids for d in out] == [[0], [1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert [d.choices[0].num_tokens for d in out] == [1, 5, 4]
    assert [d.finished for d in out] == [False, False, True]
    assert out[-1].choices[0].finish_reason == "length"
    assert "".join(d.choices[0].text for d in out) == "".join(f"<{i}>" for i in range(10))


def test_zero_interval_passes_every_delta():
    items = [_delta([i]) for i in range(5)] + [_delta([5], finished=True)]
    assert _run(items, interval=0, step=0.001) == items


def test_slow_tokens_are_not_held():
    # Tokens slower than the interval: every delta goes out as it comes.
    items = [_delta([i]) for i in range(4)] + [_delta([4], finished=True)]
    out = _run(items, interval=0.05, step=0.2)
    assert [d.choices[0].token_ids for d in out] == [[0], [1], [2], [3], [4]]


def test_n_choices_and_logprobs_merge_per_index():
    items = [
        Delta([_delta([1], index=0, logprobs=True).choices[0]], 7, False),
        Delta([_delta([2], index=1, logprobs=True).choices[0]], 7, False),
        Delta([_delta([3], index=0, logprobs=True).choices[0]], 7, False),
        Delta([_delta([4], index=1, logprobs=True, finished=True).choices[0],
               _delta([5], index=0, logprobs=True, finished=True).choices[0]], 7, True),
    ]
    out = _run(items, interval=10.0, step=0.001)
    assert len(out) == 2  # the first at once, the rest merged into the final one
    acc = CompletionAccumulator(2, want_logprobs=True)
    for d in out:
        acc.add(d)
    assert acc.choices[0].token_ids == [1, 3, 5] and acc.choices[1].token_ids == [2, 4]
    assert [e["token"] for e in acc.choices[0].logprobs] == ["<1>", "<3>", "<5>"]
    assert acc.choices[0].finish_reason == acc.choices[1].finish_reason == "length"


def test_merged_stream_gives_the_same_sse_content_as_unmerged():
    import copy
    import json

    items = [_delta([i]) for i in range(20)] + [_delta([20], finished=True)]

    def sse(deltas):
        chunks = ChunkStream(request_id="r", model="m", created=0, n=1, include_usage=True)
        lines = [line for d in deltas for line in chunks.on_delta(d)] + list(chunks.finish())
        bodies = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: {")]
        text = "".join(c["delta"].get("content") or "" for b in bodies for c in b["choices"])
        return len(bodies), text, bodies[-1]["usage"]

    n_merged, text_merged, usage_merged = sse(_run(copy.deepcopy(items), 5 / 64, 1 / 64))
    n_plain, text_plain, usage_plain = sse(items)
    assert n_merged < n_plain
    assert text_merged == text_plain
    assert usage_merged == usage_plain and usage_plain["completion_tokens"] == 21


def test_merge_deltas_keeps_latest_prompt_tokens_and_flag():
    a = _delta([1], prompt=0)
    a.merge(_delta([2], prompt=9, finished=True))
    assert a.prompt_tokens == 9 and a.finished is True and a.choices[0].token_ids == [1, 2]
    assert a.choices[0].num_tokens == 2


def test_streamed_deltas_count_tokens_without_shipping_ids():
    """A stream's deltas carry counts, not ids: the SSE usage still counts every token."""
    items = [Delta([ChoiceDelta(0, f"<{i}>", 1, None)], 7, False) for i in range(5)]
    items.append(Delta([ChoiceDelta(0, "<5>", 1, "stop")], 7, True))
    out = _run(items, interval=10.0, step=0.001)
    assert all(c.token_ids is None for d in out for c in d.choices)
    chunks = ChunkStream(request_id="r", model="m", created=0, n=1, include_usage=True)
    for d in out:
        list(chunks.on_delta(d))
    *_, usage_line, done = chunks.finish()
    assert '"completion_tokens":6' in usage_line and done == "data: [DONE]\n\n"
