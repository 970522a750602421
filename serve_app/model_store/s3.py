"""S3-compatible object storage source (``s3://bucket/prefix``), through ``boto3``.

Endpoint: ``download.endpoint_url`` (MinIO, Ceph, R2, GCS interop, ...; default AWS); region:
``download.region``; credentials: boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance/pod roles, IRSA). Every object under the prefix is a file of the model,
named by its key relative to the prefix. Sizes and ETags come from the listing: a single-part
ETag is the object's MD5, a multipart one (``<md5 of part md5s>-N``) is recomputed with the part
size read from the object's first part, and both are verified. A file is written to
``<name>.incomplete`` and renamed when complete; a killed download continues from the partial
file's length with a ranged GET conditioned on the ETag (a changed object starts over).
"""

from __future__ import annotations

import logging
import os
import pathlib

from serve_app.model_store.config import DownloadConfig
from serve_app.model_store.files import RemoteFile
from serve_app.model_store.sources import ModelSource

logger = logging.getLogger("serve_app.model_store")

_CHUNK = 1024 * 1024  # what a kill can lose of a partial file
_ATTEMPTS = 5


def _client(cfg: DownloadConfig):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
        config=Config(retries={"max_attempts": 10, "mode": "adaptive"}, max_pool_connections=max(10, cfg.workers * 2)),
    )


class S3Fetcher:
    def __init__(self, source: ModelSource, cfg: DownloadConfig) -> None:
        self.source = source
        self.s3 = _client(cfg)

    def list_files(self) -> tuple[list[RemoteFile], str | None]:
        bucket, prefix = self.source.bucket, self.source.prefix
        files = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key[len(prefix):]
                if not name or key.endswith("/"):
                    continue
                etag = obj["ETag"].strip('"')
                if "-" in etag:
                    # The multipart ETag is the MD5 of the parts' MD5s: recomputable when the parts
                    # are of one size (what aws s3, boto3, rclone and mc upload), read from part 1.
                    head = self.s3.head_object(Bucket=bucket, Key=key, PartNumber=1)
                    size, part, n = int(obj["Size"]), int(head["ContentLength"]), int(etag.rsplit("-", 1)[1])
                    if part > 0 and (n - 1) * part < size <= n * part:
                        files.append(RemoteFile(name, size, s3_multipart=(etag, part), extra={"key": key, "etag": etag}))
                    else:
                        logger.warning("s3://%s/%s: parts of uneven size; checked by size only", bucket, key)
                        files.append(RemoteFile(name, size, extra={"key": key, "etag": etag}))
                else:
                    files.append(RemoteFile(name, int(obj["Size"]), md5=etag, extra={"key": key, "etag": etag}))
        if not files:
            raise FileNotFoundError(f"no objects under s3://{bucket}/{prefix}")
        return files, None

    def download(self, f: RemoteFile, dest: pathlib.Path) -> None:
        final = dest / f.name
        part = final.with_name(final.name + ".incomplete")
        key, etag = f.extra["key"], f.extra["etag"]
        for attempt in range(1, _ATTEMPTS + 1):
            have = part.stat().st_size if part.exists() else 0
            if have > f.size:
                part.unlink()
                have = 0
            if have < f.size or f.size == 0:
                kwargs = {"Bucket": self.source.bucket, "Key": key, "IfMatch": f'"{etag}"'}
                if have:
                    kwargs["Range"] = f"bytes={have}-"
                    logger.info("s3://%s/%s: continuing at byte %d of %d", self.source.bucket, key, have, f.size)
                try:
                    body = self.s3.get_object(**kwargs)["Body"]
                    with open(part, "ab") as out:
                        for chunk in body.iter_chunks(_CHUNK):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                except Exception as exc:  # noqa: BLE001
                    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                    if code in ("PreconditionFailed", "412"):
                        logger.warning("s3://%s/%s changed since it was listed; starting it over",
                                       self.source.bucket, key)
                        part.unlink(missing_ok=True)
                        raise
                    if code in ("NoSuchKey", "404", "AccessDenied", "403") or attempt == _ATTEMPTS:
                        raise
                    logger.warning("s3://%s/%s: %r, retrying (%d/%d)", self.source.bucket, key, exc, attempt, _ATTEMPTS)
                    continue
            if part.stat().st_size == f.size:
                os.replace(part, final)
                return
        raise IOError(f"s3://{self.source.bucket}/{key}: got {part.stat().st_size} of {f.size} bytes")

    def discard_partial(self, f: RemoteFile, dest: pathlib.Path) -> None:
        (dest / f"{f.name}.incomplete").unlink(missing_ok=True)
