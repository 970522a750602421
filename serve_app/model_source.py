"""Where the model's files are (pure)."""

from __future__ import annotations

from serve_app.app_config import ModelSection


def resolve_model_path(model: ModelSection, files: str = "all") -> str:
    """A local checkpoint directory for tokenizer and engine. The embedded tiny model is
    built on first use into the local cache (deterministic, so every node builds the same files);
    a hub repo id or an s3:// prefix is downloaded once per node into the model cache
    (:mod:`serve_app.model_store`). ``files="tokenizer"``: config, tokenizer and processor files only."""
    if model.is_embedded:
        from serve_app.dev import tiny_model

        return str(tiny_model.ensure())
    from serve_app.model_store import local_model_dir

    return local_model_dir(model.path, model.revision, model.download, files)  # type: ignore[arg-type]
