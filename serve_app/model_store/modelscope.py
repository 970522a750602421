"""ModelScope source (``modelscope://org/name`` with ``model.revision``), through the ``modelscope``
hub client (``modelscope_hub.HubApi``; endpoint: ``download.endpoint_url``, else
``$MODELSCOPE_ENDPOINT`` or the public hub; token: ``$MODELSCOPE_API_TOKEN``).

The listing gives every file's size and sha256; each file is fetched with ``download_file`` into
the cache directory, which checks both itself, writes ``<file>.incomplete`` and continues it with
HTTP ranges after an interruption; the store verifies again before marking the model complete.
"""

from __future__ import annotations

import os
import pathlib

from serve_app.model_store.config import DownloadConfig
from serve_app.model_store.files import RemoteFile
from serve_app.model_store.sources import ModelSource


class ModelScopeFetcher:
    def __init__(self, source: ModelSource, cfg: DownloadConfig) -> None:
        from modelscope_hub import HubApi

        self.source = source
        self.api = HubApi(endpoint=cfg.endpoint_url, token=os.environ.get("MODELSCOPE_API_TOKEN") or None)

    def list_files(self) -> tuple[list[RemoteFile], str | None]:
        entries = self.api.list_repo_files(self.source.location, "model", revision=self.source.revision)
        files = [RemoteFile(e.path, int(e.size or 0), sha256=e.sha256 or None)
                 for e in entries if (getattr(e, "type", "blob") or "blob") != "tree" and e.path]
        return files, self.source.revision

    def download(self, f: RemoteFile, dest: pathlib.Path) -> None:
        self.api.download_file(self.source.location, repo_type="model", file_path=f.name,
                               revision=self.source.revision, local_dir=dest,
                               expected_sha256=f.sha256, file_size=f.size)

    def discard_partial(self, f: RemoteFile, dest: pathlib.Path) -> None:
        (dest / f"{f.name}.incomplete").unlink(missing_ok=True)
