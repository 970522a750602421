"""URL, data: and local-file sources against a real HTTP server on 127.0.0.1 (the only address these
tests contact; loopback is allow-listed per test), plus limits and the cache."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_app.dev import synth_media as synth
from serve_app.media import MediaConfig, MediaError, MediaLoader, MediaSpec
from serve_app.media.tuning import library_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_library_thread():
    """MediaLoader sets torch/OpenCV to 1 thread (MediaConfig.library_threads); restore afterwards so
    other test modules in this process keep their settings."""
    with library_threads(1):
        yield


JPEG = synth.jpeg(320, 240, seed=11)
PNG = synth.encode_image(synth.photo_like(64, 48, 2), "PNG")
BIG = synth.jpeg(1200, 900, seed=12)


class Server:
    """ThreadingHTTPServer on 127.0.0.1 with scripted routes; records every request it sees."""

    def __init__(self):
        self.routes = {}
        self.requests = []  # (path, Host header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Host")))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    return self._send(404, b"not found", "text/plain")
                route(self)

            def _send(self, status, body, ctype=None, headers=()):
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # clients hanging up on purpose
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def body(self, path, data, ctype="image/jpeg", status=200, headers=(), delay=0.0):
        def h(req):
            if delay:
                time.sleep(delay)
            req._send(status, data, ctype, headers)
        self.routes[path] = h

    def redirect(self, path, location, status=302):
        self.routes[path] = lambda req: req._send(status, b"", None, [("Location", location)])

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


LOOPBACK_OK = MediaConfig(allow_hosts=["127.0.0.1/32"], read_timeout_s=0.5, connect_timeout_s=1.0)


async def load(cfg, *specs, resolver=None):
    loader = MediaLoader(cfg, resolver=resolver)
    try:
        return await loader.load(list(specs))
    finally:
        await loader.aclose()


def img(url, where="messages[0].content[0]", **opts):
    return MediaSpec("image", url, opts, where)


async def test_loopback_refused_by_default_without_contact(server):
    server.body("/a.jpg", JPEG)
    for host in ("127.0.0.1", "localhost", "[::1]", "2130706433", "127.1", "0x7f.0.0.1"):
        url = f"http://{host}:{server.port}/a.jpg"
        with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[0\]: .*refused"):
            await load(MediaConfig(), img(url))
    await asyncio.sleep(0.05)
    assert server.requests == []  # nothing ever reached the server


async def test_allow_listed_loopback_fetches(server):
    server.body("/a.jpg", JPEG)
    [res] = await load(LOOPBACK_OK, img(server.url("/a.jpg")))
    assert res.image.size == (308, 252) or res.image.mode == "RGB"
    assert server.requests == [("/a.jpg", f"127.0.0.1:{server.port}")]


async def test_dns_name_is_pinned_to_the_checked_ip_with_host_header_kept(server):
    server.body("/a.jpg", JPEG)
    calls = []

    async def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    [res] = await load(LOOPBACK_OK, img(f"http://images.test:{server.port}/a.jpg"), resolver=resolver)
    assert res.image.mode == "RGB"
    assert server.requests == [("/a.jpg", f"images.test:{server.port}")]
    assert calls == ["images.test"]
    # the same name resolving to a loopback address that is not allow-listed is refused, uncontacted
    server.requests.clear()

    async def other(host, port):
        return ["127.0.0.2"]

    with pytest.raises(MediaError, match="refused"):
        await load(LOOPBACK_OK, img(f"http://images.test:{server.port}/a.jpg"), resolver=other)
    assert server.requests == []


@pytest.mark.parametrize("status", [404, 500, 403])
async def test_http_errors(server, status):
    server.body("/x.jpg", b"oops", "text/plain", status=status)
    t = time.monotonic()
    with pytest.raises(MediaError, match=rf"^messages\[0\]\.content\[0\]: .*HTTP {status}"):
        await load(LOOPBACK_OK, img(server.url("/x.jpg")))
    assert time.monotonic() - t < 2


async def test_server_that_never_answers_times_out_fast(server):
    server.body("/hang.jpg", JPEG, delay=5.0)
    t = time.monotonic()
    with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[0\]: .*sent nothing for 0.5s"):
        await load(LOOPBACK_OK, img(server.url("/hang.jpg")))
    assert time.monotonic() - t < 2


async def test_overall_fetch_deadline(server):
    def drip(req):
        req.send_response(200)
        req.send_header("Content-Length", "100000")
        req.end_headers()
        for _ in range(100):
            req.wfile.write(b"x" * 10)
            req.wfile.flush()
            time.sleep(0.2)
    server.routes["/drip"] = drip
    cfg = LOOPBACK_OK.model_copy(update={"fetch_timeout_s": 1.0})
    t = time.monotonic()
    with pytest.raises(MediaError, match="longer than 1s"):
        await load(cfg, img(server.url("/drip")))
    assert time.monotonic() - t < 3


def _paced(total: int, chunk: int, every_s: float, head_delay_s: float = 0.0):
    def route(req):
        time.sleep(head_delay_s)
        req.send_response(200)
        req.send_header("Content-Type", "image/png")
        req.send_header("Content-Length", str(total))
        req.end_headers()
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                req.wfile.write(PNG[sent:sent + n] if sent + n <= len(PNG) else b"x" * n)
                req.wfile.flush()
                sent += n
                time.sleep(every_s)
        except OSError:  # the client gave up
            pass
    return route


SLOW_BUDGET = {"fetch_rate_grace_s": 0.5, "fetch_min_bytes_per_s": 2000.0, "read_timeout_s": 5.0}


async def test_a_trickling_source_fails_after_its_grace_not_at_the_deadline(server):
    server.routes["/trickle"] = _paced(100_000, 1, 0.3)
    cfg = LOOPBACK_OK.model_copy(update=SLOW_BUDGET)
    t = time.monotonic()
    with pytest.raises(MediaError, match=r"content\[0\]: fetching .* timed out: the source is too slow \(\d+ bytes in "
                                         r"0\.\d+s; this server needs 2000 bytes/s after the first 0.5s"):
        await load(cfg, img(server.url("/trickle")))
    assert time.monotonic() - t < 2.5  # the grace plus a few bytes' worth, nowhere near fetch_timeout_s


async def test_headers_held_back_past_the_grace_fail_too(server):
    server.routes["/late"] = _paced(len(PNG), len(PNG), 0, head_delay_s=2.0)
    cfg = LOOPBACK_OK.model_copy(update=SLOW_BUDGET)
    with pytest.raises(MediaError, match=r"too slow \(0 bytes in"):
        await load(cfg, img(server.url("/late")))


async def test_a_steady_source_may_take_longer_than_the_grace(server):
    # 1.2 s in all at about 5x the minimum rate: the budget grows with every byte received
    server.routes["/steady"] = _paced(len(PNG), max(1, len(PNG) // 12), 0.1)
    cfg = LOOPBACK_OK.model_copy(update={**SLOW_BUDGET, "fetch_min_bytes_per_s": len(PNG) / 6})
    [res] = await load(cfg, img(server.url("/steady")))
    assert res.image.mode == "RGB"


async def test_byte_cap_with_and_without_content_length(server):
    cfg = LOOPBACK_OK.model_copy(update={"max_image_bytes": 50_000})
    server.body("/big.jpg", BIG)
    with pytest.raises(MediaError, match="limit of 50000 bytes"):
        await load(cfg, img(server.url("/big.jpg")))

    def chunked(req):  # no Content-Length: the cap must stop the stream
        req.send_response(200)
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()
        try:
            for i in range(0, len(BIG), 8192):
                part = BIG[i:i + 8192]
                req.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            req.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
    server.routes["/chunked.jpg"] = chunked
    with pytest.raises(MediaError, match="larger than the limit of 50000 bytes"):
        await load(cfg, img(server.url("/chunked.jpg")))


async def test_redirects_followed_and_capped_and_rechecked(server):
    server.body("/a.jpg", JPEG)
    server.redirect("/r1", "/r2")
    server.redirect("/r2", server.url("/a.jpg"), status=301)
    [res] = await load(LOOPBACK_OK, img(server.url("/r1")))
    assert res.image.mode == "RGB"
    with pytest.raises(MediaError, match="too many redirects"):
        await load(LOOPBACK_OK.model_copy(update={"max_redirects": 1}), img(server.url("/r1")))
    # every hop is re-checked: a redirect to a private / metadata address is refused uncontacted
    for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.jpg", "http://[::1]/",
                   f"http://127.0.0.2:{server.port}/a.jpg", "file:///etc/passwd", "ftp://example.com/"):
        server.redirect("/evil", target)
        with pytest.raises(MediaError, match="refused|unsupported URL scheme"):
            await load(LOOPBACK_OK, img(server.url("/evil")))


@pytest.mark.parametrize("ctype", ["image/jpeg", "image/png", "text/plain", "application/octet-stream", None,
                                   "text/html; charset=utf-8"])
async def test_wrong_or_missing_content_type_still_decodes(server, ctype):
    server.body("/img", JPEG, ctype)
    [res] = await load(LOOPBACK_OK, img(server.url("/img")))
    assert res.image.mode == "RGB"


async def test_text_served_as_image(server):
    server.body("/page.jpg", b"<!DOCTYPE html><html><body>hi</body></html>", "image/jpeg")
    with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[0\]: content is an HTML page, not an image"):
        await load(LOOPBACK_OK, img(server.url("/page.jpg")))


async def test_compressed_body_refused(server):
    server.body("/gz", gzip.compress(JPEG), "image/jpeg", headers=[("Content-Encoding", "gzip")])
    with pytest.raises(MediaError, match="Content-Encoding"):
        await load(LOOPBACK_OK, img(server.url("/gz")))


async def test_request_media_fetched_concurrently(server):
    for i in range(4):
        server.body(f"/{i}.jpg", synth.jpeg(64, 64, seed=i), delay=1.0)
    loader = MediaLoader(LOOPBACK_OK.model_copy(update={"read_timeout_s": 5.0}))
    loader.warmup()
    t = time.monotonic()
    res = await loader.load([img(server.url(f"/{i}.jpg"), f"m[{i}]") for i in range(4)])
    await loader.aclose()
    assert len(res) == 4 and time.monotonic() - t < 2.5  # serial would take >= 4 s


async def test_first_failing_item_is_named(server):
    server.body("/ok.jpg", JPEG)
    with pytest.raises(MediaError, match=r"^messages\[2\]\.content\[1\]: .*HTTP 404"):
        await load(LOOPBACK_OK, img(server.url("/ok.jpg"), "messages[0].content[0]"),
                   img(server.url("/missing.jpg"), "messages[2].content[1]"))


async def test_cache_avoids_refetch_and_redecode(server):
    server.body("/a.jpg", JPEG)
    server.body("/same-bytes.jpg", JPEG)
    loader = MediaLoader(LOOPBACK_OK)
    a = (await loader.load([img(server.url("/a.jpg"))]))[0]
    b = (await loader.load([img(server.url("/a.jpg"))]))[0]
    assert a is b and len(server.requests) == 1  # URL cached: not fetched again
    c = (await loader.load([img(server.url("/same-bytes.jpg"))]))[0]
    assert c is a and len(server.requests) == 2  # other URL, same bytes: fetched, not decoded again
    d = (await loader.load([img(server.url("/a.jpg"), max_pixels=64 * 28 * 28)]))[0]
    assert d is not a and d.uuid != a.uuid  # other options: other output
    # concurrent identical items share one fetch and decode
    server.requests.clear()
    loader.cache.clear()
    r = await loader.load([img(server.url("/a.jpg"), f"m[{i}]") for i in range(3)])
    assert r[0] is r[1] is r[2] and len(server.requests) == 1
    await loader.aclose()


def test_cache_is_bounded_by_bytes():
    from serve_app.media.cache import ByteLRU

    now = [0.0]
    c = ByteLRU(100, clock=lambda: now[0])
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1  # a is now most recent
    c.put("c", 3, 40)  # evicts b (least recent)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and c.nbytes == 80
    c.put("huge", 4, 101)
    assert c.get("huge") is None
    c.put("t", 5, 10, ttl=5)
    now[0] = 6
    assert c.get("t") is None


async def test_uuid_is_stable_and_content_addressed():
    uri = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    [a] = await load(MediaConfig(), img(uri))
    [b] = await load(MediaConfig(), img(uri))
    [c] = await load(MediaConfig(), img(uri, max_pixels=100 * 28 * 28))
    [d] = await load(MediaConfig(decode_mode="reference"), img(uri))
    assert a.uuid == b.uuid != c.uuid and a.uuid != d.uuid and len(a.uuid) == 64


# ----------------------------------------------------------------------------- data: URIs
async def test_data_uris():
    b64 = base64.b64encode(PNG).decode()
    for uri in (f"data:image/png;base64,{b64}", f"data:;base64,{b64}", f"data:image/png;base64,{b64[:50]}\n{b64[50:]}",
                "data:image/png;base64," + base64.urlsafe_b64encode(PNG).decode().rstrip("=")):
        [r] = await load(MediaConfig(), img(uri))
        assert r.image.mode == "RGB"
    with pytest.raises(MediaError, match="not valid base64"):
        await load(MediaConfig(), img("data:image/png;base64,@@@@"))
    with pytest.raises(MediaError, match="limit of 1000 bytes"):
        await load(MediaConfig(max_data_uri_bytes=1000), img(f"data:image/png;base64,{b64}"))
    with pytest.raises(MediaError, match="not allowed"):
        await load(MediaConfig(allow_data_uris=False), img(f"data:image/png;base64,{b64}"))
    with pytest.raises(MediaError, match="malformed"):
        await load(MediaConfig(), img("data:image/png;base64"))


# ----------------------------------------------------------------------------- local files
async def test_local_files_only_under_roots(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PNG)
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    os.symlink(secret, root / "escape.png")
    os.symlink(root / "sub" / "a.png", root / "inside.png")
    os.symlink(tmp_path, root / "up")
    os.mkfifo(root / "fifo")
    cfg = MediaConfig(allowed_local_roots=[str(root)])
    for ok in (str(root / "sub" / "a.png"), f"file://{root}/sub/a.png", str(root / "inside.png"),
               f"file://{root}/sub/%61.png", f"{root}/sub/../sub/a.png"):
        [r] = await load(cfg, img(ok))
        assert r.image.mode == "RGB"
    for bad, msg in [(str(secret), "outside"), (str(root / "escape.png"), "outside"), (f"{root}/../secret.png", "outside"),
                     (str(root / "up" / "secret.png"), "outside"), ("/etc/passwd", "outside"), ("/proc/self/environ", "outside"),
                     ("sub/a.png", "absolute"), (str(root / "missing.png"), "not found"), (str(root / "sub"), "regular file"),
                     (str(root / "fifo"), "regular file"), (f"{root}-sibling/a.png", "outside")]:
        with pytest.raises(MediaError, match=rf"^m\[3\]: .*{msg}"):
            await load(cfg, img(bad, "m[3]"))
    with pytest.raises(MediaError, match="not allowed"):
        await load(MediaConfig(), img(str(root / "sub" / "a.png")))
    with pytest.raises(MediaError, match="larger than the limit|more than the limit"):
        await load(cfg.model_copy(update={"max_image_bytes": 100}), img(str(root / "sub" / "a.png")))
