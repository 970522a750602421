"""``args.model.download``: where and how a remote model is cached on each node (pure)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DownloadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cache_dir: str | None = Field(
        None,
        description="Node-local cache of downloaded models (one directory per source and revision). "
        "Default: $SERVE_APP_MODEL_CACHE, else ~/.cache/serve_app/models. Every replica on a node uses "
        "the same directory; a file lock makes one download it while the others wait.",
    )
    endpoint_url: str | None = Field(
        None,
        description="s3://: the S3-compatible endpoint (MinIO, Ceph, R2, GCS interop...); default: AWS. "
        "hf:// and modelscope://: the hub's endpoint (default: $HF_ENDPOINT / $MODELSCOPE_DOMAIN, else the public hub).",
    )
    region: str | None = Field(None, description="s3://: the bucket's region (default: the AWS client's own).")
    verify: Literal["hash", "size"] = Field(
        "hash",
        description="After a download: 'hash' checks every file's size and the hash the source publishes "
        "(Hugging Face: sha256 of LFS files and the git blob id of the others; S3: the ETag's MD5; "
        "ModelScope: sha256); 'size' checks sizes only. A warm cache is always checked by presence and size.",
    )
    workers: int = Field(4, ge=1, le=32, description="Files downloaded in parallel.")
    lock_timeout_s: float = Field(
        4 * 3600, gt=0, description="How long a replica waits for another one on its node to finish the download."
    )
