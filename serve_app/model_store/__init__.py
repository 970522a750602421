"""Models from where users keep them: a local directory, a Hugging Face or ModelScope repo id
(revision pinned), or an S3-compatible prefix, downloaded once per node into a shared cache under
a file lock, verified, with progress in the log (see :mod:`serve_app.model_store.store`)."""

from __future__ import annotations

import logging
import os

from serve_app.model_store.config import DownloadConfig
from serve_app.model_store.files import FileSet
from serve_app.model_store.sources import ModelSource, parse_source

logger = logging.getLogger("serve_app.model_store")

__all__ = ["DownloadConfig", "ModelSource", "parse_source", "local_model_dir"]


def local_model_dir(path: str, revision: str | None, download: DownloadConfig, file_set: FileSet = "all") -> str:
    """The local directory to load ``path`` from, downloading it first if it is remote.
    ``file_set="tokenizer"`` (the preprocessors) fetches config, tokenizer and processor files only;
    a complete download satisfies it too."""
    source = parse_source(path, revision)
    if not source.is_remote:
        return os.path.expanduser(source.location)
    from serve_app.model_store.store import ensure_downloaded

    return str(ensure_downloaded(source, download, file_set))
