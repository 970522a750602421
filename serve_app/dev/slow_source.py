"""A loopback HTTP server that trickles: every response is an image sent one byte every ``every_s``
seconds (a hostile or broken media source). Used by the hardening e2e test and bench/worst_requests.py."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Trickle:
    def __init__(self, every_s: float = 5.0):
        self.stop = threading.Event()
        self.started = 0  # responses begun: how many fetches are under way
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                owner.started += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    while not owner.stop.is_set():
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                        owner.stop.wait(every_s)
                except OSError:  # the fetcher gave up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/slow-{i}.png"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
