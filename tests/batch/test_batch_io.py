"""Batch job bookkeeping (serve_app.batch.io): input lines, resume, durable appends, progress."""

from __future__ import annotations

import json
import os

import pytest

from serve_app.batch import io as bio

URL = "/v1/chat/completions"


def req(cid, **body):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": cid, "method": "POST", "url": URL, "body": body})


# ----------------------------------------------------------------------------- parse_line
def test_parse_valid_line_and_defaults():
    r = bio.parse_line(req("a", max_tokens=3), 1)
    assert isinstance(r, bio.RequestLine) and r.custom_id == "a" and r.body["max_tokens"] == 3 and r.line == 1
    # method and url may be left out (there is only one endpoint)
    r = bio.parse_line(json.dumps({"custom_id": "b", "body": {"x": 1}}), 2)
    assert isinstance(r, bio.RequestLine) and r.body == {"x": 1}


def test_blank_lines_are_skipped():
    assert bio.parse_line("", 1) is None
    assert bio.parse_line("  \t", 1) is None
    assert bio.parse_line(b"", 1) is None


@pytest.mark.parametrize("text, code, has_id, fragment", [
    ("{not json", "invalid_json", False, "not valid JSON"),
    ("[1, 2]", "invalid_line", False, "expected a JSON object"),
    (json.dumps({"body": {}}), "invalid_line", False, "'custom_id' must be a non-empty string"),
    (json.dumps({"custom_id": "", "body": {}}), "invalid_line", False, "custom_id"),
    (json.dumps({"custom_id": 7, "body": {}}), "invalid_line", False, "custom_id"),
    (json.dumps({"custom_id": "x" * 600, "body": {}}), "invalid_line", False, "longer than"),
    (json.dumps({"custom_id": "a", "method": "GET", "body": {}}), "invalid_method", True, "'GET'"),
    (json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}}), "invalid_url", True, "/v1/embeddings"),
    (json.dumps({"custom_id": "a", "body": {}, "extra": 1}), "invalid_line", True, "'extra'"),
    (json.dumps({"custom_id": "a", "body": "text"}), "invalid_line", True, "'body' must be a JSON object"),
    (json.dumps({"custom_id": "a"}), "invalid_line", True, "'body'"),
])
def test_line_errors(text, code, has_id, fragment):
    e = bio.parse_line(text, 4)
    assert isinstance(e, bio.LineError)
    assert e.code == code and e.line == 4 and fragment in e.message and e.message.startswith("line 4:")
    assert (e.custom_id == "a") if has_id else (e.custom_id is None)


def test_non_utf8_bytes_and_oversized_lines():
    e = bio.parse_line(b'{"custom_id": "\xff"}', 2)
    assert isinstance(e, bio.LineError) and e.code == "invalid_json" and "UTF-8" in e.message
    big = req("big", pad="x" * 200)
    e = bio.parse_line(big.encode(), 3, max_bytes=100)
    assert isinstance(e, bio.LineError) and e.code == "line_too_large" and e.custom_id == "big"
    assert isinstance(bio.parse_line(big, 3, max_bytes=10_000), bio.RequestLine)


# ----------------------------------------------------------------------------- scan_input
def test_scan_input_counts_and_duplicates(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join([req("a"), req("b"), "", "oops", req("a"), req("c"), req("b"),
                            json.dumps({"custom_id": "c", "url": "/x", "body": {}})]) + "\n")
    scan = bio.scan_input(p)
    assert scan.blank_lines == 1 and scan.requests == 5 and scan.line_errors == 2
    assert scan.duplicates == {"a": [1, 5], "b": [2, 7], "c": [6, 8]}
    report = scan.duplicate_report()
    assert report.startswith("3 custom_id(s)") and "'a' on lines 1, 5" in report
    assert [s.line for s in scan.lines] == [1, 2, 4, 5, 6, 7, 8]
    assert scan.lines[2].custom_id is None and scan.lines[2].error.code == "invalid_json"


def test_scan_input_without_trailing_newline_and_crlf(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes((req("a") + "\r\n" + req("b")).encode())
    scan = bio.scan_input(p)
    assert [s.custom_id for s in scan.lines] == ["a", "b"] and not scan.duplicates


# ----------------------------------------------------------------------------- records
def test_record_shapes_follow_openai_batch_output():
    ok = bio.response_record("a", 200, "chatcmpl-1", {"usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    assert set(ok) == {"id", "custom_id", "response", "error"} and ok["id"].startswith("batch_req_")
    assert ok["response"] == {"status_code": 200, "request_id": "chatcmpl-1", "body": ok["response"]["body"]}
    assert ok["error"] is None and bio.record_status(ok) == 200 and bio.record_usage(ok) == (3, 2)
    err = bio.line_error_record(bio.LineError(9, "invalid_json", "line 9: bad"))
    assert err["response"] is None and err["custom_id"] is None
    assert err["error"] == {"code": "invalid_json", "message": "line 9: bad", "line": 9}
    assert bio.record_status(err) is None and bio.record_usage(err) == (0, 0)


def test_dumps_line_is_one_physical_line():
    rec = bio.response_record("a", 200, "r", {"text": "x\ny\u2028z\u2029é"})
    data = bio.dumps_line(rec)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert len(data.decode().splitlines()) == 1  # str.splitlines also splits on U+2028/2029
    assert json.loads(data)["response"]["body"]["text"] == "x\ny\u2028z\u2029é"


# ----------------------------------------------------------------------------- resume
def _write(path, records, tail=b""):
    path.write_bytes(b"".join(bio.dumps_line(r) for r in records) + tail)


def test_recover_missing_and_complete_output(tmp_path):
    st = bio.recover_output(tmp_path / "none.jsonl")
    assert st.records == 0 and not st.done_ids
    out = tmp_path / "out.jsonl"
    recs = [bio.response_record("a", 200, "r", {}), bio.response_record("b", 400, "r", {}),
            bio.line_error_record(bio.LineError(3, "invalid_json", "x")),
            bio.line_error_record(bio.LineError(4, "invalid_url", "x", "d"))]
    _write(out, recs)
    st = bio.recover_output(out)
    assert st.records == 4 and st.done_ids == {"a", "b", "d"} and st.done_error_lines == {3}
    assert st.truncated_bytes == 0 and st.valid_bytes == out.stat().st_size
    assert st.is_done(bio.ScannedLine(1, "a", None)) and not st.is_done(bio.ScannedLine(2, "z", None))
    assert st.is_done(bio.ScannedLine(3, None, None)) and not st.is_done(bio.ScannedLine(5, None, None))


@pytest.mark.parametrize("tail", [
    b'{"id":"batch_req_x","custom_id":"c","respo',  # torn write: no newline
    b'{"id":"batch_req_x","custom_id":"c"',  # torn exactly before the newline
    b"\x00\x00\x00\x00",  # the file grew but its last block was never written
    b"garbage\n",  # a complete but meaningless last line
    b'{"id": 1}\n',  # JSON, but not an output record
])
def test_torn_tail_is_cut_off(tmp_path, tail):
    out = tmp_path / "out.jsonl"
    recs = [bio.response_record("a", 200, "r", {}), bio.response_record("b", 200, "r", {})]
    _write(out, recs)
    good = out.read_bytes()
    out.write_bytes(good + tail)
    st = bio.recover_output(out, truncate=False)
    assert st.done_ids == {"a", "b"} and st.truncated_bytes == len(tail)
    assert out.read_bytes() == good + tail  # truncate=False leaves the file alone
    st = bio.recover_output(out)
    assert st.done_ids == {"a", "b"} and out.read_bytes() == good


def test_damage_before_good_lines_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    a, b = (bio.dumps_line(bio.response_record(c, 200, "r", {})) for c in "ab")
    out.write_bytes(a + b"not a record\n" + b)
    with pytest.raises(bio.OutputCorrupt, match="line 2"):
        bio.recover_output(out)
    assert out.read_bytes() == a + b"not a record\n" + b  # untouched


# ----------------------------------------------------------------------------- appender
def test_appender_appends_whole_lines_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    out = tmp_path / "sub" / "out.jsonl"
    with bio.JsonlAppender(out) as w:
        assert w.write([bio.response_record("a", 200, "r", {})]) == 1
        assert w.write([bio.response_record(c, 200, "r", {}) for c in "bc"]) == 2
        assert w.write([]) == 0
    assert len(synced) == 2
    lines = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["custom_id"] for x in lines] == ["a", "b", "c"]
    assert all(x.endswith(b"\n") for x in lines)
    with bio.JsonlAppender(out) as w:  # appends after what is there
        w.write([bio.response_record("d", 200, "r", {})])
    assert bio.recover_output(out).done_ids == {"a", "b", "c", "d"}


def test_appender_refuses_a_second_writer(tmp_path):
    out = tmp_path / "out.jsonl"
    with bio.JsonlAppender(out):
        with pytest.raises(bio.OutputLocked):
            bio.JsonlAppender(out)
    bio.JsonlAppender(out).close()  # released on close


# ----------------------------------------------------------------------------- progress
def test_progress_line_and_summary():
    now = [100.0]
    p = bio.Progress(total=4, already_done=6, clock=lambda: now[0])
    p.add(bio.response_record("a", 200, "r", {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}))
    p.add(bio.response_record("b", 400, "r", {"error": {}}))
    now[0] = 110.0
    line = p.line(in_flight=2)
    assert "progress 2/4 (50.0%)" in line and "ok 1 failed 1" in line and "skipped (already in output) 6" in line
    assert "0.20 req/s" in line and "0.5 output tok/s" in line and "in flight 2" in line
    assert "elapsed 10s" in line and "eta 10s" in line
    s = p.summary()
    assert s["done"] == 2 and s["ok"] == 1 and s["failed"] == 1 and s["completion_tokens"] == 5
    assert s["skipped_already_done"] == 6 and s["requests_per_s"] == 0.2
    assert "100.0%" in bio.Progress(total=0).line()
    now[0] = 200.0
    p.restart_clock()  # the batch driver restarts it once the engines are up
    now[0] = 204.0
    assert "0.50 req/s" in p.line() and "elapsed 4s" in p.line()
