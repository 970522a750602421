"""What ``args.model.path`` names: a local directory, a Hugging Face or ModelScope repo id, or an
S3-compatible prefix (pure: no I/O).

    /models/Qwen2.5-VL-72B-Instruct-AWQ        local directory (absolute, ./ or ../ relative, or file://)
    Qwen/Qwen2.5-VL-72B-Instruct-AWQ           Hugging Face repo id (as vLLM reads it)
    hf://Qwen/Qwen2.5-VL-72B-Instruct-AWQ      Hugging Face repo id, explicitly
    modelscope://Qwen/Qwen2.5-VL-72B-Instruct-AWQ
    s3://bucket/prefix/Qwen2.5-VL-72B-Instruct-AWQ
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["local", "hf", "modelscope", "s3"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str  # local path, repo id, or "bucket/prefix" (no trailing slash)
    revision: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.kind != "local"

    @property
    def bucket(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The S3 key prefix, with a trailing '/' (or '' for a whole bucket)."""
        parts = self.location.split("/", 1)
        return parts[1].rstrip("/") + "/" if len(parts) > 1 and parts[1] else ""

    @property
    def display_name(self) -> str:
        """The default served model name: the repo id for hubs (as vLLM names them), the last path
        component otherwise."""
        if self.kind in ("hf", "modelscope"):
            return self.location
        return self.location.rstrip("/").rsplit("/", 1)[-1] or self.location

    def uri(self) -> str:
        if self.kind == "local":
            return self.location
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.kind}://{self.location}{rev}"

    def cache_relpath(self, endpoint_url: str | None = None) -> str:
        """Directory of this source and revision under the cache root: readable names, plus a short
        hash of everything that identifies the content (so two endpoints never share a directory)."""
        ident = "\0".join([self.kind, self.location, self.revision or "", endpoint_url or ""])
        digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "--", self.location).strip("-") or "root"
        rev = re.sub(r"[^A-Za-z0-9._-]+", "--", self.revision or "latest")[:64]
        return f"{self.kind}/{safe}/{rev}-{digest}"


def parse_source(path: str, revision: str | None = None) -> ModelSource:
    """Parse ``args.model.path``; raises ValueError with what is accepted."""
    p = path.strip()
    if not p:
        raise ValueError("empty model path")
    if p.startswith("file://"):
        p = p[len("file://"):]
        return _local(p, revision)
    m = re.match(r"^([a-z0-9]+)://(.*)$", p)
    if m:
        scheme, rest = m.groups()
        if scheme in ("hf", "huggingface"):
            return _repo("hf", rest, revision)
        if scheme in ("modelscope", "ms"):
            return _repo("modelscope", rest, revision)
        if scheme == "s3":
            rest = rest.strip("/")
            bucket = rest.split("/", 1)[0]
            if not _BUCKET.match(bucket):
                raise ValueError(f"'{bucket}' is not a valid S3 bucket name")
            if revision is not None:
                raise ValueError("model.revision applies to hub repo ids only; put the version in the S3 prefix")
            return ModelSource("s3", rest)
        raise ValueError(f"unknown scheme '{scheme}://' (accepted: hf://, modelscope://, s3://, file://, or a directory)")
    if p.startswith(("/", "./", "../", "~")):
        return _local(p, revision)
    if _REPO_ID.match(p):
        return _repo("hf", p, revision)
    raise ValueError(
        "not a directory (absolute, or ./ relative), a repo id 'org/name', or an hf://, modelscope:// or s3:// URI")


def _local(p: str, revision: str | None) -> ModelSource:
    if revision is not None:
        raise ValueError("model.revision applies to hub repo ids only, not to a local directory")
    return ModelSource("local", p)


def _repo(kind: SourceKind, repo_id: str, revision: str | None) -> ModelSource:
    repo_id = repo_id.strip("/")
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"'{repo_id}' is not a repo id of the form 'org/name'")
    if not revision:
        raise ValueError(
            f"a hub model needs model.revision pinned (a commit hash, or a tag/branch name that is then "
            f"cached under that name and never re-resolved), e.g. revision: <commit of {repo_id}>")
    return ModelSource(kind, repo_id, revision)
