"""Download a remote model once per node into the shared cache, under a file lock, verified.

Layout under the cache root (``args.model.download.cache_dir``)::

    <kind>/<repo or bucket--prefix>/<revision>-<hash>/          the model directory vLLM loads
    <kind>/<repo or bucket--prefix>/<revision>-<hash>/.serve_app_model.json   written LAST
    .locks/<hash>.lock

Every replica of a node takes the same file lock before it looks: the first downloads while the
others wait (and log that they wait), then find the marker and load. The marker lists every file
with its size and hashes and is written only after all of them are downloaded and verified, so a
directory without it is never handed to the engine. A killed download leaves its partial files;
the next attempt keeps the complete ones (re-verified) and continues the partial ones where the
source client supports ranges (Hugging Face and S3 do). A warm cache needs no network: the marker
is checked against the files by presence and size.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import filelock

from serve_app.model_store.config import DownloadConfig
from serve_app.model_store.files import (
    FileSet, RemoteFile, bytes_on_disk, check_complete, hash_problem, quick_problem, select,
)
from serve_app.model_store.sources import ModelSource

logger = logging.getLogger("serve_app.model_store")

MARKER = ".serve_app_model.json"
PROGRESS_INTERVAL_S = float(os.environ.get("SERVE_APP_DOWNLOAD_PROGRESS_S", "10"))


class Fetcher(Protocol):
    def list_files(self) -> tuple[list[RemoteFile], str | None]:
        """Every file of the model with its size and published hashes, and the resolved commit."""

    def download(self, f: RemoteFile, dest: pathlib.Path) -> None:
        """Write ``dest / f.name`` (atomically: the final name appears only when complete),
        continuing a partial download of an earlier attempt where possible."""

    def discard_partial(self, f: RemoteFile, dest: pathlib.Path) -> None:
        """Forget any partial download of ``f`` (after it failed verification)."""


class ModelDownloadError(RuntimeError):
    pass


def default_cache_dir() -> pathlib.Path:
    env = os.environ.get("SERVE_APP_MODEL_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "serve_app" / "models"


def make_fetcher(source: ModelSource, cfg: DownloadConfig) -> Fetcher:
    if source.kind == "hf":
        from serve_app.model_store.hf import HfFetcher

        return HfFetcher(source, cfg)
    if source.kind == "s3":
        from serve_app.model_store.s3 import S3Fetcher

        return S3Fetcher(source, cfg)
    if source.kind == "modelscope":
        from serve_app.model_store.modelscope import ModelScopeFetcher

        return ModelScopeFetcher(source, cfg)
    raise ValueError(f"not a remote source: {source}")


def cache_dir_for(source: ModelSource, cfg: DownloadConfig) -> pathlib.Path:
    root = pathlib.Path(os.path.expanduser(cfg.cache_dir)) if cfg.cache_dir else default_cache_dir()
    return root / source.cache_relpath(cfg.endpoint_url)


def read_marker(dest: pathlib.Path) -> dict | None:
    try:
        return json.loads((dest / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _marker_ok(dest: pathlib.Path, marker: dict | None, file_set: FileSet) -> bool:
    if not marker or (file_set == "all" and marker.get("file_set") != "all"):
        return False
    files = [RemoteFile.from_json(n, d) for n, d in marker["files"].items()]
    problems = {f.name: p for f in select(files, file_set) if (p := quick_problem(dest, f))}
    if problems:
        logger.warning("model cache %s is damaged, repairing it: %s", dest,
                       "; ".join(f"{n}: {p}" for n, p in sorted(problems.items())[:10]))
        return False
    return True


def _make_visible(log: logging.Logger) -> None:
    """Progress nobody sees is no progress: inside a Serve replica nothing configures this logger,
    so INFO would be dropped. Then it writes to stderr itself (Ray keeps it in the worker's log and
    `serve run` shows it)."""
    if log.getEffectiveLevel() > logging.INFO and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def ensure_downloaded(source: ModelSource, cfg: DownloadConfig, file_set: FileSet = "all",
                      fetcher: Fetcher | None = None) -> pathlib.Path:
    """The local directory of ``source``, downloading what is missing (under the node's lock)."""
    _make_visible(logger)
    dest = cache_dir_for(source, cfg)
    lock_path = dest.parent.parent.parent / ".locks" / f"{dest.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path))
    started = time.monotonic()
    timeout = 0.0  # first a try: a replica that has to wait says so at once
    while True:
        try:
            lock.acquire(timeout=timeout)
            break
        except filelock.Timeout:
            waited = time.monotonic() - started
            if waited >= cfg.lock_timeout_s:
                raise ModelDownloadError(f"{source.uri()}: gave up after {waited:.0f}s waiting for the download "
                                         f"lock {lock_path} (held by another replica on this node)") from None
            logger.info("%s: another process on this node is downloading it into %s; waiting (%.0fs so far)",
                        source.uri(), dest, waited)
            timeout = min(30.0, cfg.lock_timeout_s - waited)
    try:
        if time.monotonic() - started > 1:
            logger.info("%s: download lock acquired after %.0fs", source.uri(), time.monotonic() - started)
        if _marker_ok(dest, read_marker(dest), file_set):
            logger.info("%s: using the node cache %s", source.uri(), dest)
            return dest
        _download(source, cfg, file_set, dest, fetcher or make_fetcher(source, cfg))
        return dest
    finally:
        lock.release()


def _download(source: ModelSource, cfg: DownloadConfig, file_set: FileSet, dest: pathlib.Path,
              fetcher: Fetcher) -> None:
    t0 = time.monotonic()
    try:
        listing, commit = fetcher.list_files()
    except Exception as exc:  # noqa: BLE001 - the message says what to do
        raise ModelDownloadError(
            f"{source.uri()} is not in this node's cache ({dest}) and the source cannot be listed: "
            f"{type(exc).__name__}: {exc}") from exc
    files = select(listing, file_set)
    check_complete(files, file_set, source.uri())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)
    if hasattr(fetcher, "cleanup_stale"):
        fetcher.cleanup_stale(dest)
    todo = [f for f in files if quick_problem(dest, f)]
    total = sum(f.size for f in files)
    logger.info("%s: downloading %d of %d files (%s of %s) into %s", source.uri(), len(todo),
                len(files), _human(sum(f.size for f in todo)), _human(total), dest)
    _fetch_all(source, fetcher, todo, dest, total, cfg.workers)

    # Verify everything (files kept from an interrupted attempt included); a bad file is fetched
    # again once, then it is an error.
    for attempt in (1, 2):
        check = hash_problem if cfg.verify == "hash" else quick_problem
        with ThreadPoolExecutor(max_workers=min(cfg.workers, 4)) as pool:
            problems = {f.name: p for f, p in zip(files, pool.map(lambda f: check(dest, f), files)) if p}
        if not problems:
            break
        bad = [f for f in files if f.name in problems]
        detail = "; ".join(f"{n}: {p}" for n, p in sorted(problems.items())[:10])
        if attempt == 2:
            for f in bad:
                (dest / f.name).unlink(missing_ok=True)
                fetcher.discard_partial(f, dest)
            raise ModelDownloadError(f"{source.uri()}: downloaded files do not match the source: {detail}")
        logger.warning("%s: %d file(s) failed verification, downloading them again: %s", source.uri(), len(bad), detail)
        for f in bad:
            (dest / f.name).unlink(missing_ok=True)
            fetcher.discard_partial(f, dest)
        _fetch_all(source, fetcher, bad, dest, total, cfg.workers)

    marker = {
        "source": source.uri(), "commit": commit, "file_set": file_set, "verify": cfg.verify,
        "endpoint_url": cfg.endpoint_url, "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f.name: f.to_json() for f in files},
    }
    tmp = dest / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, dest / MARKER)
    logger.info("%s: %d files, %s ready in %s (%.0fs, verified: %s)", source.uri(), len(files), _human(total),
                dest, time.monotonic() - t0, cfg.verify)


def _fetch_all(source: ModelSource, fetcher: Fetcher, todo: list[RemoteFile], dest: pathlib.Path,
               total: int, workers: int) -> None:
    if not todo:
        return
    stop = threading.Event()
    done_files = [0]
    start_bytes = bytes_on_disk(dest)
    t0 = time.monotonic()

    def report() -> None:
        while not stop.wait(PROGRESS_INTERVAL_S):
            have = bytes_on_disk(dest)
            rate = (have - start_bytes) / max(1e-3, time.monotonic() - t0)
            logger.info("%s: %s / %s, %d / %d files, %.1f MB/s", source.uri(), _human(have), _human(total),
                        done_files[0], len(todo), rate / 1e6)

    def one(f: RemoteFile) -> None:
        (dest / f.name).parent.mkdir(parents=True, exist_ok=True)
        (dest / f.name).unlink(missing_ok=True)  # a wrong-size leftover is never kept
        fetcher.download(f, dest)
        done_files[0] += 1
        logger.info("%s: got %s (%.1f MB)", source.uri(), f.name, f.size / 1e6)

    reporter = threading.Thread(target=report, name="model-download-progress", daemon=True)
    reporter.start()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(one, f) for f in todo]:
                fut.result()
    except Exception as exc:  # noqa: BLE001
        raise ModelDownloadError(f"{source.uri()}: download failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stop.set()


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"
