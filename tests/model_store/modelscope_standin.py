"""A ModelScope hub stand-in on loopback: the endpoints the ``modelscope`` client uses to list a
model's files (``/api/v1/models/<repo>/repo/files``, with sizes and sha256) and to download one
(``/api/v1/models/<repo>/repo?Revision=&FilePath=``), serving a local directory. Same knobs as
tests/model_store/hub_standin.py: ``corrupt``, ``hide``, ``throttle_bps``, and a request log."""

from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import threading
import time
import urllib.parse


class ModelScopeStandIn:
    def __init__(self, repo_id: str, model_dir: pathlib.Path, revision: str = "master") -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.model_dir = pathlib.Path(model_dir)
        self.files = sorted(p.relative_to(self.model_dir).as_posix() for p in self.model_dir.rglob("*")
                            if p.is_file() and not p.name.startswith("."))
        self.corrupt: set[str] = set()
        self.hide: set[str] = set()
        self.throttle_bps: float | None = None
        self.requests: list[tuple[str, str, dict, str | None]] = []
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ModelScopeStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def body(self, name: str) -> bytes:
        data = (self.model_dir / name).read_bytes()
        if name in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        return data

    def gets(self, name: str) -> list[str | None]:
        with self._lock:
            return [r for m, p, q, r in self.requests if m == "GET" and p.endswith("/repo") and q.get("FilePath") == name]

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json", extra=None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    step = 64 * 1024
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        if hub.throttle_bps and ctype != "application/json":
                            time.sleep(step / hub.throttle_bps)

            def _json(self, obj, code=200) -> None:
                self._send(code, json.dumps(obj).encode())

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                u = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(u.path)
                q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
                with hub._lock:
                    hub.requests.append((self.command, path, q, self.headers.get("Range")))
                base = f"/api/v1/models/{hub.repo_id}"
                if path == f"{base}/repo/files":
                    files = [{"Path": n, "Name": n.rsplit("/", 1)[-1], "Type": "blob", "Revision": hub.revision,
                              "Size": len((hub.model_dir / n).read_bytes()),
                              "Sha256": hashlib.sha256((hub.model_dir / n).read_bytes()).hexdigest()}
                             for n in hub.files if n not in hub.hide]
                    return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
                if path == f"{base}/repo" and q.get("FilePath") in hub.files and q["FilePath"] not in hub.hide:
                    data = hub.body(q["FilePath"])
                    start = 0
                    rng = self.headers.get("Range")
                    if rng and rng.startswith("bytes="):
                        start = int(rng[6:].split("-")[0])
                    extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
                    return self._send(206 if start else 200, data[start:], "application/octet-stream", extra)
                if path in (base, f"{base}/revisions"):
                    return self._json({"Code": 200, "Success": True, "Data": {
                        "Id": hub.repo_id, "Name": hub.repo_id, "Revision": hub.revision,
                        "RevisionMap": {"Branches": [{"Revision": hub.revision}], "Tags": []}}})
                return self._json({"Code": 404, "Success": False, "Message": f"not found: {path}"}, 404)

        return Handler
