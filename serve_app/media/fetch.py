"""Getting the bytes of a media source: http(s) URLs, data: URIs and local files, each capped.

* http(s): httpx with connect/read timeouts, an overall deadline and a minimum transfer rate (after
  a grace period; so a source that trickles bytes fails in seconds, not at the overall deadline),
  the body streamed and cut off at the byte cap, redirects followed by hand (each hop's URL re-checked), no proxies from the
  environment. Every TCP connection goes through ``GuardedBackend``: the host is resolved once,
  every address is checked by ``HostPolicy`` and the socket is opened to that checked IP, while
  the URL (hence the Host header and TLS SNI/certificate check) keeps the hostname.
* data: base64 (or percent-encoded) payload, size checked before decoding.
* local: only under ``allowed_local_roots``; the opened file's real path (via /proc/self/fd) is
  checked, so a symlink swapped in after the check cannot escape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import stat
import urllib.parse
from dataclasses import dataclass

import httpcore
import httpx

from .config import MediaConfig
from .errors import AddressRefused, MediaError, MediaTooLarge
from .netguard import HostPolicy, Resolver, parse_ip_literal, resolve_checked, system_resolver


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None  # as declared by the source (data: media type, HTTP header); informational
    origin: str  # "http", "data" or "file"
    cache_key: str | None = None  # stable key for the *source* (URL / path+mtime), None for data:


def short(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def source_kind(source: str) -> str:
    low = source[:8].lower()
    if low.startswith(("http://", "https://")):
        return "http"
    if low.startswith("data:"):
        return "data"
    if low.startswith("file://") or "://" not in source[:16]:
        return "file"
    scheme = source.split(":", 1)[0]
    raise MediaError(f"unsupported URL scheme {scheme!r} (use http, https, data or a local path)")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked IP; the only way our client reaches the network."""

    def __init__(self, policy: HostPolicy, resolver: Resolver, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for here left the task unable to be
            # cancelled by the caller's deadline later in the same request (the first on a connection).
            async with asyncio.timeout(timeout):
                ips = await resolve_checked(host, port, self.policy, self.resolver)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        last: Exception | None = None
        for ip in ips:
            try:
                return await self.inner.connect_tcp(ip, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise AddressRefused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, config: MediaConfig, backend: httpcore.AsyncNetworkBackend):
        super().__init__(trust_env=False, retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass
class Pace:
    """A download's time budget: ``grace_s`` for connecting, headers and the first bytes, then
    ``1 / min_rate`` seconds per byte received, so N bytes may take ``grace_s + N / min_rate``. One
    source trickling bytes then holds a preprocessor slot for seconds, not for the overall deadline."""

    start: float
    grace_s: float
    min_rate: float  # bytes/s; 0: no rate budget
    received: int = 0

    def deadline(self) -> float | None:
        if self.min_rate <= 0:
            return None
        return self.start + self.grace_s + self.received / self.min_rate


class Fetcher:
    def __init__(self, config: MediaConfig, *, resolver: Resolver | None = None,
                 network_backend: httpcore.AsyncNetworkBackend | None = None):
        self.config = config
        self.policy = HostPolicy(config.allow_hosts)
        self.resolver = resolver or system_resolver
        self._backend = GuardedBackend(self.policy, self.resolver, network_backend)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._roots = [os.path.realpath(r) for r in config.allowed_local_roots]

    # -- public -------------------------------------------------------------------------------
    async def fetch(self, source: str, *, max_bytes: int) -> Fetched:
        kind = source_kind(source)
        if kind == "http":
            return await self.fetch_http(source, max_bytes=max_bytes)
        if kind == "data":
            return self.decode_data_uri(source, max_bytes=min(max_bytes, self.config.max_data_uri_bytes))
        return await asyncio.to_thread(self.read_local, source, max_bytes)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- http ---------------------------------------------------------------------------------
    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            c = self.config
            self._client = httpx.AsyncClient(
                transport=_GuardedTransport(c, self._backend),
                timeout=httpx.Timeout(connect=c.connect_timeout_s, read=c.read_timeout_s,
                                      write=c.read_timeout_s, pool=c.connect_timeout_s),
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": c.user_agent, "Accept": "image/*, video/*;q=0.9, */*;q=0.5",
                         "Accept-Encoding": "identity"},
            )
            self._client_loop = loop
        return self._client

    def _check_url(self, url: str) -> httpx.URL:
        try:
            u = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as e:
            raise MediaError(f"invalid URL {short(url)!r}: {e}") from None
        if u.scheme not in ("http", "https"):
            raise MediaError(f"unsupported URL scheme {u.scheme!r} in {short(url)!r}")
        if u.scheme == "http" and not self.config.allow_http:
            raise MediaError("plain http:// URLs are not allowed; use https://")
        if not u.host:
            raise MediaError(f"URL has no host: {short(url)!r}")
        if u.userinfo:
            raise MediaError("URLs with credentials (user:password@) are not allowed")
        # Fast refusal of literal / well-known names before touching the pool.
        self.policy.check_name(u.host)
        lit = parse_ip_literal(u.host)
        if lit is not None:
            self.policy.check_ip(u.host, lit)
        return u

    async def fetch_http(self, url: str, *, max_bytes: int) -> Fetched:
        c = self.config
        client = self._get_client()  # our own setup (TLS context: seconds on a loaded box) is not the source's time
        pace = Pace(asyncio.get_running_loop().time(), c.fetch_rate_grace_s, c.fetch_min_bytes_per_s)
        try:
            async with asyncio.timeout(c.fetch_timeout_s) as whole, asyncio.timeout_at(pace.deadline()) as slow:
                def on_bytes(n: int) -> None:
                    pace.received += n
                    if not slow.expired():  # a chunk can still be handed over after the deadline passed
                        slow.reschedule(pace.deadline())

                return await self._fetch_http(client, url, max_bytes, on_bytes)
        except TimeoutError:
            if whole.expired():
                raise MediaError(f"fetching {short(url)} took longer than {c.fetch_timeout_s:g}s") from None
            elapsed = asyncio.get_running_loop().time() - pace.start
            raise MediaError(
                f"fetching {short(url)} timed out: the source is too slow ({pace.received} bytes in "
                f"{elapsed:.1f}s; this server needs {c.fetch_min_bytes_per_s:g} bytes/s after the first "
                f"{c.fetch_rate_grace_s:g}s, media.fetch_min_bytes_per_s)") from None

    async def _fetch_http(self, client: httpx.AsyncClient, url: str, max_bytes: int, on_bytes) -> Fetched:
        u = self._check_url(url)
        for _hop in range(self.config.max_redirects + 1):
            try:
                async with client.stream("GET", u) as resp:
                    if resp.status_code in _REDIRECTS:
                        loc = resp.headers.get("location")
                        if not loc:
                            raise MediaError(f"{short(str(u))} answered HTTP {resp.status_code} without a Location")
                        u = self._check_url(str(u.join(loc)))
                        continue
                    if resp.status_code != 200:
                        raise MediaError(f"fetching {short(str(u))} failed: HTTP {resp.status_code} "
                                         f"{resp.reason_phrase}".rstrip())
                    clen = resp.headers.get("content-length")
                    if clen and clen.isdigit() and int(clen) > max_bytes:
                        raise MediaTooLarge(f"{short(str(u))} is {int(clen)} bytes, more than the limit of "
                                            f"{max_bytes} bytes")
                    buf = bytearray()
                    async for chunk in resp.aiter_raw():
                        buf += chunk
                        on_bytes(len(chunk))
                        if len(buf) > max_bytes:
                            raise MediaTooLarge(f"{short(str(u))} is larger than the limit of {max_bytes} bytes")
                    if resp.headers.get("content-encoding", "identity").lower() not in ("identity", ""):
                        # We asked for identity; decoding compressed bodies here would bypass the cap.
                        raise MediaError(f"{short(str(u))}: unsupported Content-Encoding "
                                         f"{resp.headers['content-encoding']!r}")
                    ctype = resp.headers.get("content-type")
                    return Fetched(bytes(buf), ctype.split(";")[0].strip().lower() if ctype else None,
                                   "http", cache_key=f"url:{u}")
            except MediaError:
                raise
            except httpx.ConnectTimeout:
                raise MediaError(f"connecting to {u.host} timed out after {self.config.connect_timeout_s:g}s") from None
            except httpx.ReadTimeout:
                raise MediaError(f"{short(str(u))} sent nothing for {self.config.read_timeout_s:g}s; "
                                 f"gave up") from None
            except httpx.TimeoutException:
                raise MediaError(f"fetching {short(str(u))} timed out") from None
            except httpx.ConnectError as e:
                raise MediaError(f"cannot connect to {u.host}: {e or 'connection failed'}") from None
            except (httpx.HTTPError, httpcore.ProtocolError, OSError) as e:
                raise MediaError(f"fetching {short(str(u))} failed: {type(e).__name__}: {e}") from None
        raise MediaError(f"too many redirects (more than {self.config.max_redirects}) fetching {short(url)}")

    # -- data: --------------------------------------------------------------------------------
    @staticmethod
    def decode_data_uri(uri: str, *, max_bytes: int) -> Fetched:
        head, sep, payload = uri.partition(",")
        if not sep:
            raise MediaError("malformed data: URI (no ',')")
        params = head[5:].split(";")
        mediatype = params[0].strip().lower() or None
        is_b64 = any(p.strip().lower() == "base64" for p in params[1:])
        if is_b64:
            if len(payload) * 3 // 4 > max_bytes + 3:
                raise MediaTooLarge(f"data: URI payload is larger than the limit of {max_bytes} bytes")
            p = "".join(payload.split())
            if "%" in p:
                p = urllib.parse.unquote(p)
            alt = b"-_" if ("-" in p or "_" in p) else None
            p += "=" * (-len(p) % 4)
            try:
                data = base64.b64decode(p, altchars=alt, validate=True)
            except (binascii.Error, ValueError):
                raise MediaError("data: URI is not valid base64") from None
        else:
            if len(payload) > 3 * max_bytes:
                raise MediaTooLarge(f"data: URI payload is larger than the limit of {max_bytes} bytes")
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > max_bytes:
            raise MediaTooLarge(f"data: URI payload is {len(data)} bytes, more than the limit of {max_bytes} bytes")
        return Fetched(data, mediatype, "data")

    # -- local files --------------------------------------------------------------------------
    def read_local(self, source: str, max_bytes: int) -> Fetched:
        if source[:7].lower() == "file://":
            parsed = urllib.parse.urlsplit(source)
            if parsed.netloc not in ("", "localhost"):
                raise MediaError(f"file:// URL with a remote host is not allowed: {short(source)!r}")
            path = urllib.parse.unquote(parsed.path)
        else:
            path = source
        if not self._roots:
            raise MediaError("local file paths are not allowed on this server")
        if not os.path.isabs(path):
            raise MediaError(f"local path must be absolute: {short(path)!r}")
        real = os.path.realpath(path)
        if not self._under_roots(real):
            raise MediaError(f"local path {short(path)!r} is outside the allowed directories")
        try:
            # O_NONBLOCK: opening a FIFO (or a device) must not block a worker thread forever
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MediaError(f"local file not found: {short(path)!r}") from None
        except OSError as e:
            raise MediaError(f"cannot open local file {short(path)!r}: {e.strerror}") from None
        try:
            try:  # what was actually opened (defeats a symlink swapped in after realpath)
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = real
            if not self._under_roots(opened):
                raise MediaError(f"local path {short(path)!r} is outside the allowed directories")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MediaError(f"local path {short(path)!r} is not a regular file")
            os.set_blocking(fd, True)
            if st.st_size > max_bytes:
                raise MediaTooLarge(f"local file {short(path)!r} is {st.st_size} bytes, more than the limit "
                                    f"of {max_bytes} bytes")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise MediaTooLarge(f"local file {short(path)!r} is larger than the limit of {max_bytes} bytes")
            return Fetched(data, None, "file", cache_key=f"file:{opened}:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}")
        finally:
            os.close(fd)

    def _under_roots(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self._roots)
