"""A throttling TCP proxy on loopback (for interrupting real downloads half-way): forwards
127.0.0.1:<port> to a target, at most ``bps`` bytes per second towards the client, and records
the HTTP request heads it forwards."""

from __future__ import annotations

import socket
import threading
import time


class ThrottlingProxy:
    def __init__(self, target: tuple[str, int], bps: float | None) -> None:
        self.target = target
        self.bps = bps
        self.request_heads: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        try:
            while data := src.recv(16 * 1024):
                if not throttle:
                    head = data.split(b"\r\n\r\n", 1)[0]
                    if head[:4] in (b"GET ", b"HEAD", b"PUT ", b"POST"):
                        self.request_heads.append(head.decode("latin-1"))
                dst.sendall(data)
                if throttle and self.bps:
                    time.sleep(len(data) / self.bps)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
