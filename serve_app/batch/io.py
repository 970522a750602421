"""Batch job bookkeeping (pure: no Ray, no vLLM, no model).

* Input: OpenAI Batch API JSONL, one request per line::

      {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

* Output: OpenAI batch output JSONL, one line per input line, in completion order::

      {"id": "batch_req_…", "custom_id": "req-1",
       "response": {"status_code": 200, "request_id": "chatcmpl-…", "body": {...chat.completion}},
       "error": null}

  A request the server would answer with an HTTP error (invalid body, bad media, prompt too long,
  engine failure) gets ``response.status_code`` 4xx/5xx and the same error body the online API
  returns. A line that is not a request at all (invalid JSON, no ``custom_id``, wrong ``url``)
  gets ``response: null`` and ``error: {code, message, line}`` (OpenAI's batch error object).

* Resume: :func:`recover_output` reads an existing output file; every ``custom_id`` in it (and every
  input line number reported without one) is done and skipped by a rerun. A trailing partial line
  (the job died mid-write) is cut off; damage anywhere else is refused, never guessed at.

* Durability: :class:`JsonlAppender` appends whole lines with one ``write`` and ``fsync``s them, so
  what a rerun sees is a prefix of complete lines plus at most one torn line at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
MAX_CUSTOM_ID_CHARS = 512


# ----------------------------------------------------------------------------- input lines
@dataclass(frozen=True)
class RequestLine:
    """A line that names a request: its body is validated later (it becomes a 4xx if bad)."""

    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    """A line that is not a usable request at all."""

    line: int
    code: str  # invalid_json | invalid_line | invalid_url | invalid_method | line_too_large
    message: str
    custom_id: str | None = None


def parse_line(text: str | bytes, line: int, *, max_bytes: int | None = None) -> RequestLine | LineError | None:
    """One input line → :class:`RequestLine`, :class:`LineError`, or None for a blank line."""
    if isinstance(text, bytes):
        size = len(text)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return LineError(line, "invalid_json", f"line {line}: not UTF-8 ({exc.reason} at byte {exc.start})")
    else:
        size = len(text.encode("utf-8"))
    if not text.strip():
        return None
    if max_bytes is not None and size > max_bytes:
        # Still try to name the request, so the error is reported against its custom_id.
        return LineError(line, "line_too_large", f"line {line}: {size} bytes exceeds the limit of {max_bytes} bytes",
                         _sniff_custom_id(text))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(line, "invalid_json", f"line {line}: not valid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(obj, dict):
        return LineError(line, "invalid_line", f"line {line}: expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(line, "invalid_line", f"line {line}: 'custom_id' must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return LineError(line, "invalid_line", f"line {line}: 'custom_id' is longer than {MAX_CUSTOM_ID_CHARS} characters")
    method = obj.get("method", "POST")
    if method != "POST":
        return LineError(line, "invalid_method", f"line {line}: method {method!r} is not supported (only 'POST')",
                         custom_id)
    url = obj.get("url", CHAT_COMPLETIONS_URL)
    if url != CHAT_COMPLETIONS_URL:
        return LineError(line, "invalid_url", f"line {line}: url {url!r} is not supported (only "
                                              f"{CHAT_COMPLETIONS_URL!r})", custom_id)
    unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if unknown:
        return LineError(line, "invalid_line", f"line {line}: unknown field(s) {', '.join(map(repr, unknown))}",
                         custom_id)
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(line, "invalid_line", f"line {line}: 'body' must be a JSON object (a chat completion request)",
                         custom_id)
    return RequestLine(line, custom_id, body)


def _sniff_custom_id(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    cid = obj.get("custom_id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and cid and len(cid) <= MAX_CUSTOM_ID_CHARS else None


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline) for every line of a file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            yield n, raw.rstrip(b"\r\n")


@dataclass(frozen=True)
class ScannedLine:
    line: int
    custom_id: str | None  # None: a line error without a usable custom_id
    error: LineError | None  # None: a request line (its body is read again when it runs)


@dataclass
class InputScan:
    lines: list[ScannedLine] = field(default_factory=list)
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # custom_id → every line it is on
    blank_lines: int = 0

    @property
    def requests(self) -> int:
        return sum(1 for s in self.lines if s.error is None)

    @property
    def line_errors(self) -> int:
        return sum(1 for s in self.lines if s.error is not None)

    def duplicate_report(self, limit: int = 10) -> str:
        items = sorted(self.duplicates.items(), key=lambda kv: kv[1][0])
        shown = "; ".join(f"{cid!r} on lines {', '.join(map(str, lines))}" for cid, lines in items[:limit])
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        return f"{len(items)} custom_id(s) appear more than once: {shown}{more}"


def scan_input(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> InputScan:
    """Classify every line and find duplicate ``custom_id``s (bodies are not kept)."""
    scan = InputScan()
    first: dict[str, int] = {}
    for n, raw in iter_lines(path):
        parsed = parse_line(raw, n, max_bytes=max_bytes)
        if parsed is None:
            scan.blank_lines += 1
            continue
        cid = parsed.custom_id
        if cid is not None:
            if cid in first:
                scan.duplicates.setdefault(cid, [first[cid]]).append(n)
            else:
                first[cid] = n
        scan.lines.append(ScannedLine(n, cid, parsed if isinstance(parsed, LineError) else None))
    return scan


# ----------------------------------------------------------------------------- output records
def new_record_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def response_record(custom_id: str, status_code: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_record_id(),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def line_error_record(err: LineError) -> dict[str, Any]:
    return {
        "id": new_record_id(),
        "custom_id": err.custom_id,
        "response": None,
        "error": {"code": err.code, "message": err.message, "line": err.line},
    }


def record_status(record: dict[str, Any]) -> int | None:
    """HTTP status of a record, None for a line error."""
    resp = record.get("response")
    return resp.get("status_code") if isinstance(resp, dict) else None


def record_usage(record: dict[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a successful record, else (0, 0)."""
    resp = record.get("response") or {}
    usage = (resp.get("body") or {}).get("usage") if resp.get("status_code") == 200 else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def dumps_line(record: dict[str, Any]) -> bytes:
    # ensure_ascii keeps every record one physical line whatever the model emitted (U+2028 etc.).
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


# ----------------------------------------------------------------------------- resume
class OutputCorrupt(RuntimeError):
    """The output file is damaged somewhere other than its last line: refuse to guess."""


@dataclass
class ResumeState:
    done_ids: set[str] = field(default_factory=set)
    done_error_lines: set[int] = field(default_factory=set)  # line errors recorded without a custom_id
    records: int = 0
    truncated_bytes: int = 0  # a torn trailing line that was cut off
    valid_bytes: int = 0

    def is_done(self, scanned: ScannedLine) -> bool:
        if scanned.custom_id is not None:
            return scanned.custom_id in self.done_ids
        return scanned.line in self.done_error_lines


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or "custom_id" not in rec or ("response" not in rec and "error" not in rec):
        return None
    return rec


def recover_output(path: str | os.PathLike[str], *, truncate: bool = True) -> ResumeState:
    """Read what a previous run wrote. A torn last line (no newline, or not a record) is cut off
    (``truncate``) or just ignored; a damaged line followed by good ones raises :class:`OutputCorrupt`."""
    state = ResumeState()
    p = pathlib.Path(path)
    if not p.exists():
        return state
    data = p.read_bytes()
    pos = 0
    bad_at: int | None = None
    bad_line_no = 0
    line_no = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        raw = data[pos:end]
        line_no += 1
        rec = _parse_record(raw) if nl >= 0 else None
        if rec is None:
            # Not a complete record (torn write, NUL-filled tail after a crash, garbage): fine
            # only if nothing valid follows.
            if bad_at is None:
                bad_at, bad_line_no = pos, line_no
        else:
            if bad_at is not None:
                raise OutputCorrupt(
                    f"{p}: line {bad_line_no} is not a complete output record but later lines are; "
                    "the file was changed by something other than this job. Fix or move it, then rerun.")
            state.records += 1
            cid = rec.get("custom_id")
            if isinstance(cid, str):
                state.done_ids.add(cid)
            else:
                err = rec.get("error")
                if isinstance(err, dict) and isinstance(err.get("line"), int):
                    state.done_error_lines.add(err["line"])
        pos = end
    state.valid_bytes = len(data) if bad_at is None else bad_at
    state.truncated_bytes = len(data) - state.valid_bytes
    if truncate and state.truncated_bytes:
        with open(p, "r+b") as f:
            f.truncate(state.valid_bytes)
            f.flush()
            os.fsync(f.fileno())
    return state


# ----------------------------------------------------------------------------- writing
class OutputLocked(RuntimeError):
    """Another run is writing the same output file."""


class JsonlAppender:
    """Appends whole JSON lines: one ``write`` per batch of records, then ``fsync``.

    Holds an exclusive ``flock`` on the file while open, so two runs on the same node cannot
    interleave their lines."""

    def __init__(self, path: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if lock:
            import fcntl

            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise OutputLocked(f"{self.path} is being written by another batch run") from None
        self.written = 0

    def write(self, records: Iterable[dict[str, Any]]) -> int:
        data = b"".join(dumps_line(r) for r in records)
        if not data:
            return 0
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        count = data.count(b"\n")
        self.written += count
        return count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- progress
@dataclass
class Progress:
    """Counts and rates for the progress line the job prints while it runs."""

    total: int  # lines this run has to do (after resume)
    already_done: int = 0
    clock: Any = time.monotonic
    done: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = dataclasses.field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def restart_clock(self) -> None:
        """Rates count from now (e.g. once the engines are up, not from when the job started)."""
        self.started = self.clock()

    def add(self, record: dict[str, Any]) -> None:
        self.done += 1
        if record_status(record) == 200:
            self.ok += 1
            p, c = record_usage(record)
            self.prompt_tokens += p
            self.completion_tokens += c
        else:
            self.failed += 1

    @property
    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def line(self, in_flight: int | None = None) -> str:
        el = self.elapsed
        rps = self.done / el
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = _fmt_duration(left / rps) if rps > 0 and left > 0 else ("0s" if left == 0 else "?")
        parts = [
            f"progress {self.done}/{self.total} ({pct:.1f}%)",
            f"ok {self.ok} failed {self.failed}",
        ]
        if self.already_done:
            parts.append(f"skipped (already in output) {self.already_done}")
        parts.append(f"{rps:.2f} req/s, {self.completion_tokens / el:.1f} output tok/s, "
                     f"{(self.prompt_tokens + self.completion_tokens) / el:.1f} total tok/s")
        if in_flight is not None:
            parts.append(f"in flight {in_flight}")
        parts.append(f"elapsed {_fmt_duration(el)} eta {eta}")
        return " | ".join(parts)

    def summary(self) -> dict[str, Any]:
        el = self.elapsed
        return {
            "total": self.total, "done": self.done, "ok": self.ok, "failed": self.failed,
            "skipped_already_done": self.already_done, "elapsed_s": round(el, 3),
            "requests_per_s": round(self.done / el, 3),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "output_tokens_per_s": round(self.completion_tokens / el, 3),
        }


def _fmt_duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
