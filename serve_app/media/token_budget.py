"""A request's visual tokens against what its context leaves for them (pure: no I/O).

The context (``max_model_len``) holds the prompt's text, its images and videos, and the answer. The
ingress knows the text and ``max_tokens``, so it fixes the tokens left for media (a
:class:`TokenBudget`) and refuses what the items' options alone already exceed (:func:`token_floor`:
``resized_*`` sizes, frame counts); the preprocessor knows each item's declared size once it has
the header or the container index, and refuses the request before decoding anything when the
items' tokens (:func:`~serve_app.media.vision_math.image_tokens`, ``video_tokens``: exactly what
the engine will count) exceed the budget. vLLM would refuse such a prompt too, but only after
every item was decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import vision_math as vm
from .errors import MediaError, MediaTooLarge
from .spec import MediaSpec


@dataclass(frozen=True)
class TokenBudget:
    context: int  # max_model_len
    output: int  # kept for the answer: max_tokens, else min_tokens, at least 1
    text: int  # the prompt's text takes at least this many
    output_asked: bool = True  # output is the request's max_tokens

    @property
    def media(self) -> int:
        return self.context - self.output - self.text

    def describe(self) -> str:
        answer = f"the answer {self.output}: max_tokens" if self.output_asked else f"the answer at least {self.output}"
        return (f"{max(self.media, 0)} tokens left for images and videos in this model's context of {self.context} "
                f"(the text takes at least {self.text}, {answer})")


def token_floor(spec: MediaSpec, config) -> int:
    """The fewest tokens ``spec`` can become, from its options alone: exact with ``resized_*``,
    else one per image or pair of frames. ``config``: the server's MediaConfig."""
    opts = spec.options or {}
    per_frame = 1
    if "resized_height" in opts and "resized_width" in opts:
        try:
            per_frame = vm.image_tokens(*vm.smart_resize(int(opts["resized_height"]), int(opts["resized_width"])))
        except MediaError:  # the preprocessor names the problem
            pass
    if spec.kind == "image":
        return per_frame
    if isinstance(spec.source, (list, tuple)):
        frames = vm.padded_frame_count(len(spec.source))
    elif "nframes" in opts:
        frames = max(vm.round_by_factor(opts["nframes"], vm.FRAME_FACTOR), vm.FRAME_FACTOR)
    else:
        frames = vm.FRAME_FACTOR
    return vm.video_tokens(frames, per_frame * vm.IMAGE_FACTOR, vm.IMAGE_FACTOR)


def check_tokens(specs: Sequence[MediaSpec], tokens: Sequence[int], budget: TokenBudget, *, exact: bool) -> None:
    """MediaTooLarge naming the item at which the running total passes ``budget.media``. ``exact``:
    ``tokens`` are what the items become (from their headers), else lower bounds (their options)."""
    total = 0
    for spec, n in zip(specs, tokens):
        total += n
        if total > budget.media:
            what = "would take" if exact else "need at least"
            raise MediaTooLarge(
                f"{spec.where}: the request's images and videos up to this one {what} {total} tokens "
                f"(this one {n}), more than the {budget.describe()}; send fewer or smaller items, lower "
                "max_pixels/total_pixels/fps, or a smaller max_tokens")
