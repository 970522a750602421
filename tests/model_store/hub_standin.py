"""A Hugging Face hub stand-in on loopback: the endpoints huggingface_hub's model_info and
hf_hub_download use (``/api/models/<repo>/revision/<rev>`` and ``/<repo>/resolve/<rev>/<file>``),
serving the files of a local directory (the project's tiny model). Files larger than
``lfs_threshold`` are presented as LFS files (sha256), the others as git blobs (git blob id),
as the real hub does. Knobs for the tests: ``throttle_bps`` (slow downloads), ``corrupt`` (serve
different bytes of the same size for these names), and a request log."""

from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import threading
import time
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, repo_id: str, model_dir: pathlib.Path, lfs_threshold: int = 10_000) -> None:
        self.repo_id = repo_id
        self.model_dir = pathlib.Path(model_dir)
        self.files = sorted(p.relative_to(self.model_dir).as_posix() for p in self.model_dir.rglob("*")
                            if p.is_file() and not p.name.startswith("."))
        self.lfs_threshold = lfs_threshold
        self.throttle_bps: float | None = None
        self.corrupt: set[str] = set()
        self.hide: set[str] = set()
        self.down = False  # drop every connection without an answer (an unreachable hub)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self._meta = {n: self._describe(n) for n in self.files}
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _describe(self, name: str) -> dict:
        data = (self.model_dir / name).read_bytes()
        d = {"rfilename": name, "size": len(data),
             "blobId": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}
        if len(data) > self.lfs_threshold:
            d["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return d

    def body(self, name: str) -> bytes:
        data = (self.model_dir / name).read_bytes()
        if name in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        return data

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every GET of ``name`` (None: the whole file)."""
        with self._lock:
            return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + name)]

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _record(self) -> str:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append((self.command, path, self.headers.get("Range")))
                return path

            def _json(self, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _404(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self._serve(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def _serve(self, head: bool) -> None:
                path = self._record()
                if hub.down:
                    self.close_connection = True
                    return
                api = f"/api/models/{hub.repo_id}/revision/"
                if path.startswith(api):
                    siblings = [hub._meta[n] for n in hub.files if n not in hub.hide]
                    return self._json({"id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT,
                                       "private": False, "siblings": siblings})
                resolve = f"/{hub.repo_id}/resolve/"
                if not path.startswith(resolve):
                    return self._404()
                _rev, _, name = path[len(resolve):].partition("/")
                if name not in hub._meta or name in hub.hide:
                    return self._404()
                meta = hub._meta[name]
                data = hub.body(name)
                etag = meta["lfs"]["sha256"] if "lfs" in meta else meta["blobId"]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and not head:
                    start = int(rng[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                if "lfs" in meta:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                view = memoryview(data)[start:]
                step = 64 * 1024
                try:
                    for i in range(0, len(view), step):
                        self.wfile.write(view[i:i + step])
                        if hub.throttle_bps:
                            time.sleep(step / hub.throttle_bps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
