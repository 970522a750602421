"""Long context as the Qwen2.5-VL model card describes it, set from YAML (``args.model.long_context``)
and handed to vLLM as ``hf_overrides`` (pure apart from reading the checkpoint's config.json).

Two modes:

- ``yarn``: YaRN rope scaling, ``{"rope_type": "yarn", "factor": F, "original_max_position_embeddings":
  N}`` with the checkpoint's ``mrope_section`` (and ``rope_theta``) kept; the context becomes F × N
  tokens. The model card's caveat: YaRN (static in vLLM: applied to every prompt, short ones too)
  noticeably hurts temporal and spatial grounding (video moments, boxes), so the card does not
  recommend it for those tasks.
- ``max_position_embeddings``: only a larger ``max_position_embeddings`` (e.g. 65536), which the card
  recommends for long video: M-RoPE spends few position ids on video, so the native rope stretches
  further without YaRN's accuracy cost on localization.

``max_model_len`` follows (the new window) unless ``engine.engine_kwargs.max_model_len`` sets a
smaller one. Checkpoint formats: transformers ≥ 5 (vLLM 0.32) keeps the rope settings in
``text_config.rope_parameters``; transformers 4.x (vLLM 0.26) in ``rope_scaling``, top-level in
config.json (what the model card edits) and in ``text_config`` once loaded; the override is written
for the installed one. Checked against vLLM 0.32's own ModelConfig in the tests; the 4.x form is not
exercised here (no vLLM 0.26 in the CPU environment).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LongContextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["yarn", "max_position_embeddings"] = Field(
        description="'yarn': YaRN rope scaling (hurts temporal/spatial grounding, per the model card); "
        "'max_position_embeddings': a larger position window only (the card's advice for long video).")
    factor: float | None = Field(None, gt=1, le=64, description="yarn: the scaling factor (the card: 4).")
    original_max_position_embeddings: int | None = Field(
        None, ge=128, description="yarn: the window the model was trained for (Qwen2.5-VL: 32768).")
    max_position_embeddings: int | None = Field(
        None, ge=128, description="max_position_embeddings mode: the new window (e.g. 65536); "
        "yarn: default factor × original_max_position_embeddings.")

    @model_validator(mode="after")
    def _fields_for_mode(self) -> "LongContextConfig":
        if self.mode == "yarn":
            if self.factor is None or self.original_max_position_embeddings is None:
                raise ValueError("mode 'yarn' needs factor and original_max_position_embeddings "
                                 "(the model card: factor 4, original_max_position_embeddings 32768)")
        else:
            if self.max_position_embeddings is None:
                raise ValueError("mode 'max_position_embeddings' needs max_position_embeddings (e.g. 65536)")
            if self.factor is not None or self.original_max_position_embeddings is not None:
                raise ValueError("factor and original_max_position_embeddings apply to mode 'yarn' only")
        return self

    @property
    def window(self) -> int:
        if self.mode == "yarn" and self.max_position_embeddings is None:
            return int(self.factor * self.original_max_position_embeddings)  # type: ignore[operator]
        return int(self.max_position_embeddings)  # type: ignore[arg-type]


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def checkpoint_rope(config_json: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's own rope settings (mrope_section, rope_theta, ...), whichever format it uses."""
    text = config_json.get("text_config") or {}
    for src in (text.get("rope_parameters"), config_json.get("rope_parameters"),
                text.get("rope_scaling"), config_json.get("rope_scaling")):
        if isinstance(src, dict) and src:
            rope = dict(src)
            break
    else:
        rope = {}
    theta = rope.get("rope_theta", text.get("rope_theta", config_json.get("rope_theta")))
    if theta is not None:
        rope["rope_theta"] = theta
    return rope


def hf_overrides(lc: LongContextConfig, config_json: dict[str, Any], transformers_major: int | None = None) -> dict:
    major = _transformers_major() if transformers_major is None else transformers_major
    window = lc.window
    rope = checkpoint_rope(config_json)
    if "mrope_section" not in rope:
        raise ValueError("the checkpoint's config.json has no mrope_section (is it a Qwen2.5-VL checkpoint?)")
    if lc.mode == "yarn":
        rope.pop("type", None)
        rope.update(rope_type="yarn", factor=float(lc.factor),  # type: ignore[arg-type]
                    original_max_position_embeddings=int(lc.original_max_position_embeddings))  # type: ignore[arg-type]
    if major >= 5:
        text: dict[str, Any] = {"max_position_embeddings": window}
        if lc.mode == "yarn":
            text["rope_parameters"] = rope
        return {"text_config": text}
    # transformers 4.x: the model card's config.json edit (top-level rope_scaling, "type" spelling
    # kept for the mrope/yarn dispatch of that era), mirrored into text_config, which is what vLLM
    # reads as the text model's config once transformers has split it out (4.5x).
    text = {"max_position_embeddings": window}
    if lc.mode == "yarn":
        legacy = {k: v for k, v in rope.items() if k != "rope_theta"}
        legacy["type"] = "yarn"
        text["rope_scaling"] = legacy
    return {**text, "text_config": dict(text)}


def long_context_kwargs(lc: LongContextConfig | None, model_dir: str, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Engine kwargs for ``lc``: ``hf_overrides`` merged with any the user set, and ``max_model_len``
    (the new window, unless the user asked for less)."""
    if lc is None:
        return {}
    config_json = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    overrides = dict(engine_kwargs.get("hf_overrides") or {})
    for k, v in hf_overrides(lc, config_json).items():
        if isinstance(v, dict) and isinstance(overrides.get(k), dict):
            overrides[k] = {**overrides[k], **v}
        else:
            overrides[k] = v
    out: dict[str, Any] = {"hf_overrides": overrides}
    user_len = engine_kwargs.get("max_model_len")
    if user_len is not None and user_len > lc.window:
        raise ValueError(f"engine.engine_kwargs.max_model_len = {user_len} exceeds model.long_context's window "
                         f"of {lc.window} tokens")
    out["max_model_len"] = user_len or lc.window
    return out
