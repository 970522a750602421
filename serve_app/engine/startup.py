"""Why a vLLM engine failed to start, in one line (pure, apart from reading a log file).

vLLM runs its engine core (and, with several devices, its workers) in other processes. When one of
them dies while starting, the replica only sees "Engine core initialization failed. See root cause
above": the cause is a traceback those processes printed to the stderr they share with the
replica. :class:`StartupLog` remembers where that stderr stood before the start, and
:func:`root_cause` reads the first real exception printed after it, so the replica can fail with
the cause itself (shown by ``serve status``) instead of a pointer to a log.
"""

from __future__ import annotations

import os
import re
import stat

# vLLM and Ray prefix lines from child processes: "(EngineCore_DP0 pid=12) ", "(RayWorkerWrapper
# pid=34, ip=10.0.0.1) ", "(Worker_TP1 pid=56) ".
_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)*\((?:[^()]*?)pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)*\s?")
# "module.Error: text" / "Error" / "torch.AcceleratorError: CUDA error: ..." at column 0.
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Fault))(?::\s*(.*))?$")
# Wrappers that only say that something else failed.
_GENERIC = (
    "Engine core initialization failed",
    "WorkerProc initialization failed",
    "EngineDeadError",
    "The actor died",
    "ActorDiedError",
    "RayTaskError",
    "Worker failed with error",
    "ProcessLookupError",
    "KeyboardInterrupt",
    "SystemExit",
)
MAX_CAUSE_CHARS = 600
MAX_LOG_BYTES = 4 << 20


def _strip(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\r\n"))


def root_cause(log_text: str) -> str | None:
    """The first non-generic exception line of any traceback in ``log_text`` (chained
    tracebacks print the root first), or None."""
    in_tb = False
    for raw in log_text.splitlines():
        line = _strip(raw)
        if line.startswith("Traceback (most recent call last):"):
            in_tb = True
            continue
        if not in_tb or line.startswith((" ", "\t")) or not line:
            continue
        m = _EXC_LINE.match(line)
        if m is None:
            continue
        in_tb = False
        if any(g in line for g in _GENERIC):
            continue
        return line[:MAX_CAUSE_CHARS]
    return None


def innermost(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}".removeprefix("builtins.")[:MAX_CAUSE_CHARS]


class StartupLog:
    """The replica's stderr file (Ray writes each worker's stderr to a file) and its size now."""

    def __init__(self, fd: int = 2) -> None:
        self.path: str | None = None
        self.offset = 0
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.stat(path)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self.path, self.offset = path, st.st_size

    def text_since_start(self) -> str:
        if self.path is None:
            return ""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(self.offset, size - MAX_LOG_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def failure_message(self, exc: BaseException) -> str:
        """One line: the root cause from the log if a child process printed one, else the
        innermost exception of ``exc``'s chain."""
        cause = root_cause(self.text_since_start()) or describe(innermost(exc))
        return f"vLLM engine failed to start: {cause}"
