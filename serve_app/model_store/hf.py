"""Hugging Face hub source, through ``huggingface_hub`` (endpoint: ``download.endpoint_url``, else
``$HF_ENDPOINT``; token: ``$HF_TOKEN``; ``$HF_HUB_OFFLINE=1`` forbids downloading).

Listing: ``model_info(files_metadata=True)`` gives every file's size, the sha256 of LFS files and the
git blob id of the others, all of which are verified after the download. Each file is fetched with
``hf_hub_download(local_dir=...)``, which writes to a temporary file and renames it into place, so
a killed download keeps every finished file; the unfinished ones start again with huggingface_hub
≥ 1.x, which no longer continues partial files (0.x continues them).
"""

from __future__ import annotations

import pathlib

from serve_app.model_store.config import DownloadConfig
from serve_app.model_store.files import RemoteFile
from serve_app.model_store.sources import ModelSource


class HfFetcher:
    def __init__(self, source: ModelSource, cfg: DownloadConfig) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the store logs its own progress
        self.source = source
        self.endpoint = cfg.endpoint_url  # None: huggingface_hub's own ($HF_ENDPOINT or the public hub)
        self.api = HfApi(endpoint=self.endpoint)
        self.commit: str | None = None

    def list_files(self) -> tuple[list[RemoteFile], str | None]:
        from huggingface_hub import constants

        offline = getattr(constants, "is_offline_mode", None)
        if offline() if offline else constants.HF_HUB_OFFLINE:
            raise RuntimeError("HF_HUB_OFFLINE is set on this node (unset it, or fill the cache first)")
        info = self.api.model_info(self.source.location, revision=self.source.revision, files_metadata=True)
        self.commit = info.sha
        files = []
        for s in info.siblings or []:
            lfs = s.lfs
            if lfs is not None:
                files.append(RemoteFile(s.rfilename, int(lfs.size), sha256=lfs.sha256))
            else:
                files.append(RemoteFile(s.rfilename, int(s.size or 0), git_sha1=s.blob_id))
        return files, self.commit

    def download(self, f: RemoteFile, dest: pathlib.Path) -> None:
        from huggingface_hub import hf_hub_download

        hf_hub_download(self.source.location, f.name, revision=self.commit or self.source.revision,
                        local_dir=dest, endpoint=self.endpoint)

    def discard_partial(self, f: RemoteFile, dest: pathlib.Path) -> None:
        # huggingface_hub's own record of the file: without it a re-download is never skipped.
        meta = dest / ".cache" / "huggingface" / "download" / f"{f.name}.metadata"
        meta.unlink(missing_ok=True)

    def cleanup_stale(self, dest: pathlib.Path) -> None:
        """Temporary files of a killed earlier attempt: huggingface_hub ≥ 1.x names them per process
        and never reuses them (0.x continues them, so they stay)."""
        import huggingface_hub

        if int(huggingface_hub.__version__.split(".")[0]) < 1:
            return
        root = dest / ".cache" / "huggingface" / "download"
        if root.is_dir():
            for p in root.rglob("*.incomplete"):
                p.unlink(missing_ok=True)
