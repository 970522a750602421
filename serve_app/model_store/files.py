"""Remote file listings, which files a purpose needs, and checking local files against what the
source published (pure apart from reading the files)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

FileSet = Literal["all", "tokenizer"]

# Weight formats. A repo that has safetensors is loaded from them (as vLLM does), so the others are
# not downloaded; "tokenizer" (what the preprocessors need: config, tokenizer, chat template,
# processor configs) takes no weights at all.
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ckpt")
_LEGACY_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.ckpt", "*.onnx")
_NEVER = (".gitattributes", ".gitignore", "*.md", "LICENSE*", "*.png", "*.jpg", ".cache/*", ".locks/*")
REQUIRED = ("config.json",)

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class RemoteFile:
    name: str  # relative path, '/' separated
    size: int
    sha256: str | None = None
    md5: str | None = None  # a single-part S3 ETag
    git_sha1: str | None = None  # the git blob id of a non-LFS file on the Hugging Face hub
    s3_multipart: tuple[str, int] | None = None  # (ETag "<md5 of md5s>-N", part size)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        d = {"size": self.size}
        for k in ("sha256", "md5", "git_sha1"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.s3_multipart:
            d["s3_multipart"] = list(self.s3_multipart)
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> "RemoteFile":
        mp = d.get("s3_multipart")
        return cls(name=name, size=int(d["size"]), sha256=d.get("sha256"), md5=d.get("md5"),
                   git_sha1=d.get("git_sha1"), s3_multipart=(mp[0], int(mp[1])) if mp else None)


def is_weight(name: str) -> bool:
    return any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], p) for p in _WEIGHTS)


def select(files: Iterable[RemoteFile], file_set: FileSet) -> list[RemoteFile]:
    files = [f for f in files if not any(fnmatch.fnmatch(f.name, p) for p in _NEVER)
             and not f.name.endswith("/")]
    if file_set == "tokenizer":
        return [f for f in files if not is_weight(f.name)]
    if any(f.name.endswith(".safetensors") for f in files):
        files = [f for f in files if not any(fnmatch.fnmatch(f.name.rsplit("/", 1)[-1], p) for p in _LEGACY_WEIGHTS)]
    return files


def check_complete(files: list[RemoteFile], file_set: FileSet, where: str) -> None:
    """A source that lacks what a model directory needs fails here, before anything is downloaded."""
    names = {f.name for f in files}
    missing = [r for r in REQUIRED if r not in names]
    if missing:
        raise FileNotFoundError(f"{where}: no {', '.join(missing)} (is this a model directory?); found: "
                                f"{sorted(names)[:10]}")
    if file_set == "all" and not any(is_weight(n) for n in names):
        raise FileNotFoundError(f"{where}: no weight files (*.safetensors, *.bin, ...)")


def quick_problem(root: pathlib.Path, f: RemoteFile) -> str | None:
    """Presence and size (a stat): what a warm cache is checked with on every start."""
    p = root / f.name
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != f.size:
        return f"size {size} != {f.size}"
    return None


def hash_problem(root: pathlib.Path, f: RemoteFile) -> str | None:
    """Size, then every hash the source published for the file; None when it matches."""
    problem = quick_problem(root, f)
    if problem or not (f.sha256 or f.md5 or f.git_sha1 or f.s3_multipart):
        return problem
    p = root / f.name
    sha256 = hashlib.sha256() if f.sha256 else None
    md5 = hashlib.md5() if f.md5 else None
    git = hashlib.sha1(f"blob {f.size}\0".encode()) if f.git_sha1 else None
    part_md5s: list[bytes] = []
    part_size = f.s3_multipart[1] if f.s3_multipart else 0
    part = hashlib.md5() if f.s3_multipart else None
    in_part = 0
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in (sha256, md5, git):
                if h is not None:
                    h.update(chunk)
            if part is not None:
                view = memoryview(chunk)
                while view:
                    take = min(len(view), part_size - in_part)
                    part.update(view[:take])
                    in_part += take
                    view = view[take:]
                    if in_part == part_size:
                        part_md5s.append(part.digest())
                        part, in_part = hashlib.md5(), 0
    if sha256 is not None and sha256.hexdigest() != f.sha256:
        return f"sha256 {sha256.hexdigest()} != {f.sha256}"
    if md5 is not None and md5.hexdigest() != f.md5:
        return f"md5 {md5.hexdigest()} != ETag {f.md5}"
    if git is not None and git.hexdigest() != f.git_sha1:
        return f"git blob id {git.hexdigest()} != {f.git_sha1}"
    if f.s3_multipart:
        if in_part:
            part_md5s.append(part.digest())
        etag = f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
        if etag != f.s3_multipart[0]:
            return f"multipart ETag {etag} != {f.s3_multipart[0]}"
    return None


def bytes_on_disk(root: pathlib.Path) -> int:
    """Everything under root, partial downloads included (for progress)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            try:
                total += os.stat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total
