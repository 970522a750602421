"""Where the model's files are (pure)."""

from __future__ import annotations

from serve_app.app_config import ModelSection


def resolve_model_path(model: ModelSection) -> str:
    """A local checkpoint directory (or hub id) for tokenizer and engine. The embedded tiny model is
    built on first use into the local cache (deterministic, so every node builds the same files)."""
    if model.is_embedded:
        from serve_app.dev import tiny_model

        return str(tiny_model.ensure())
    return model.path
