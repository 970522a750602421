"""Process-wide settings for a media preprocessing process (applied by ``MediaLoader()``).

* ``set_library_threads``: torch's and OpenCV's intra-op thread counts. The loader's decode pool
  already runs one item per core; nested pools oversubscribe (10-30x slower resizes under load).
* ``tune_malloc``: glibc serves allocations above its mmap threshold (at most 32 MiB, dynamic) with
  fresh mmap()ed pages, so every 12 MP decode/resize/PIL buffer (36-48 MB) is page-faulted in and
  zeroed anew: about 30-40 ms per 4000x3000 image, a third of the whole pipeline. Raising the
  threshold (and the trim threshold) lets freed buffers be reused. Cost: up to ``trim_mb`` of freed
  memory may stay in the process instead of going back to the OS.

Only construct a MediaLoader (or call these) in the preprocessing process, not inside a CPU vLLM
engine process, whose thread settings must not change.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def set_library_threads(n: int) -> None:
    from .resize import _cv2, _torch

    torch, cv2 = _torch(), _cv2()
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if cv2 is not None:
        cv2.setNumThreads(n)


@contextlib.contextmanager
def library_threads(n: int):
    """Temporarily set torch's and OpenCV's thread counts (tests, benchmarks); restored on exit."""
    from .resize import _cv2, _torch

    torch, cv2 = _torch(), _cv2()
    saved = (torch.get_num_threads() if torch is not None else None, cv2.getNumThreads() if cv2 is not None else None)
    set_library_threads(n)
    try:
        yield
    finally:
        if saved[0] is not None:
            torch.set_num_threads(saved[0])
        if saved[1] is not None:
            cv2.setNumThreads(saved[1])


@functools.cache
def tune_malloc(mmap_threshold_mb: int = 256, trim_mb: int = 512) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where not glibc/Linux."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_mb << 20) == 1 and ok
    return ok
