"""vLLM ``RequestOutput`` → :class:`~serve_app.engine.contract.Delta` (pure; duck-typed on vLLM's
output objects, so no vLLM class crosses a replica boundary).

The engine replica yields these to the ingress; the ingress turns them into OpenAI responses
(:mod:`serve_app.api.responses`).
"""

from __future__ import annotations

from typing import Any

from serve_app.engine.contract import ChoiceDelta, Delta
from serve_app.errors import EngineError


def delta_from_output(out: Any, *, top_logprobs: int | None, with_token_ids: bool = True) -> Delta:
    """``top_logprobs``: None when the client did not ask for logprobs, else how many alternatives.
    ``with_token_ids``: ship the ids (a non-streaming response shows them) or only their count."""
    # One engine step for one request. With ``RequestOutputKind.DELTA`` each completion carries
    # only its new tokens; with ``FINAL_ONLY`` it carries everything once.
    choices = [
        ChoiceDelta(
            index=comp.index,
            text=comp.text,
            num_tokens=len(comp.token_ids),
            finish_reason=_finish_reason(comp.finish_reason),
            logprobs=None if top_logprobs is None else _logprobs(comp.token_ids, comp.logprobs, top_logprobs),
            token_ids=list(comp.token_ids) if with_token_ids else None,
        )
        for comp in out.outputs
    ]
    return Delta(
        choices=choices,
        prompt_tokens=len(out.prompt_token_ids) if out.prompt_token_ids is not None else 0,
        finished=bool(out.finished),
    )


def _finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    reason = str(reason)
    if reason == "error":
        # vLLM ends a request with "error" when the engine failed it (not the client's doing):
        # answered as a 500, never passed off as a normal "stop".
        raise EngineError("engine failure: vLLM finished the request with an error")
    return {"stop": "stop", "length": "length", "abort": "abort"}.get(reason, "stop")


def _logprobs(token_ids, logprobs, k: int) -> list[dict[str, Any]]:
    """vLLM gives, per generated token, a dict token_id → Logprob(logprob, rank, decoded_token)
    holding the sampled token and the top-k alternatives."""
    if logprobs is None:
        return []
    entries = []
    for tok, alternatives in zip(token_ids, logprobs):
        sampled = alternatives.get(tok)
        top = sorted(
            (a for t, a in alternatives.items() if a.rank is not None and a.rank >= 1),
            key=lambda a: a.rank,
        )[:k]
        entries.append(
            {
                "token": _text(sampled, tok),
                "logprob": _finite(sampled.logprob) if sampled is not None else -9999.0,
                "top_logprobs": [{"token": _text(a, None), "logprob": _finite(a.logprob)} for a in top],
            }
        )
    return entries


def _text(lp, tok) -> str:
    text = getattr(lp, "decoded_token", None)
    if text is None:
        return f"token_id:{tok}" if tok is not None else ""
    return text


def _finite(x: float) -> float:
    # JSON has no -inf; OpenAI uses -9999.0 for "impossible".
    return max(float(x), -9999.0)
