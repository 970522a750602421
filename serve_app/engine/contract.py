"""What goes into the engine and what comes out of it (pure): the one request type and the one
delta type, shared by the Serve deployments and the batch job.

* :class:`EngineRequest`: ingress (or a batch preprocessing actor) → engine. Small: the
  chat-template messages, which the engine renders with its own tokenizer (one renderer, one
  tokenizer per replica), and the sampling fields. The media travel beside it as a
  :class:`~serve_app.preprocess.prepared.PreparedMedia` through the object store.
* :class:`Delta`: engine → ingress, one per engine step or pacing interval
  (:mod:`serve_app.engine.outputs` builds them, :mod:`serve_app.api.responses` renders them).
  A streamed delta carries token counts only; token ids are shipped only where the response
  shows them (non-streaming choices' ``token_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class EngineRequest:
    request_id: str
    messages: list[dict[str, Any]]  # chat-template messages (serve_app.api.chat.ChatPlan)
    sampling: dict[str, Any]  # the SamplingParams fields the client set (serve_app.api.sampling)
    top_logprobs: int | None = None  # None: no logprobs asked for
    stream: bool = False
    sent_at: float | None = None  # time.time() when the ingress sent it (the engine_queue metric)

    @property
    def n(self) -> int:
        return int(self.sampling.get("n", 1))


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # None: not asked for
    token_ids: list[int] | None = None  # None: not shipped (streams only count tokens)


@dataclass(slots=True)
class Delta:
    choices: list[ChoiceDelta] = field(default_factory=list)
    prompt_tokens: int = 0
    finished: bool = False

    def merge(self, later: Delta) -> Delta:
        """Append ``later`` (a later delta of the same request) to this one, in place: per choice
        index, text, token ids and logprobs are concatenated and token counts added; the finish
        reason, prompt token count and ``finished`` flag are the latest known."""
        by_index = {c.index: c for c in self.choices}
        for c in later.choices:
            acc = by_index.get(c.index)
            if acc is None:
                acc = ChoiceDelta(c.index, c.text, c.num_tokens, c.finish_reason,
                                  None if c.logprobs is None else list(c.logprobs),
                                  None if c.token_ids is None else list(c.token_ids))
                self.choices.append(acc)
                by_index[c.index] = acc
                continue
            acc.text += c.text
            acc.num_tokens += c.num_tokens
            if c.token_ids is not None:
                if acc.token_ids is None:
                    acc.token_ids = []
                acc.token_ids.extend(c.token_ids)
            if c.logprobs is not None:
                if acc.logprobs is None:
                    acc.logprobs = []
                acc.logprobs.extend(c.logprobs)
            if c.finish_reason is not None:
                acc.finish_reason = c.finish_reason
        self.prompt_tokens = later.prompt_tokens or self.prompt_tokens
        self.finished = later.finished
        return self
