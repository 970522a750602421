"""Address policy: every spelling of a private / loopback / link-local / metadata address is refused,
checked on the resolved IP, with the connection pinned to the checked IP.

No traffic leaves this process here: refusals are tested on the checker and the resolver with IP
literals and stubbed DNS answers; connections go to a recording stub backend.
"""

from __future__ import annotations

import ipaddress

import httpcore
import pytest

from serve_app.media import MediaConfig, MediaError, MediaLoader, MediaSpec
from serve_app.media.errors import AddressRefused
from serve_app.media.fetch import GuardedBackend
from serve_app.media.netguard import HostPolicy, is_public, parse_ip_literal, resolve_checked
from serve_app.media.tuning import library_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_library_thread():
    """MediaLoader sets torch/OpenCV to 1 thread (MediaConfig.library_threads); restore afterwards so
    other test modules in this process keep their settings."""
    with library_threads(1):
        yield


REFUSED_IPS = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1",
    "169.254.169.254",  # AWS/GCP/Azure metadata (link-local)
    "169.254.170.2",  # ECS task metadata
    "100.100.100.200",  # Alibaba metadata (CGNAT range)
    "100.64.0.1", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1",
    "192.0.0.170", "198.18.0.1", "192.0.2.1", "203.0.113.9",
    "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1", "ff0e::1", "fec0::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
    "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 10.0.0.1 / 169.254.169.254
    "2002:a00:1::", "2002:7f00:1::1",  # 6to4 of 10.0.0.1 / 127.0.0.1
    "::127.0.0.1", "2001:db8::1", "100::1",
]
PUBLIC_IPS = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "151.101.1.69", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e"]


@pytest.mark.parametrize("ip", REFUSED_IPS)
def test_non_public_addresses_are_refused(ip):
    addr = ipaddress.ip_address(ip)
    assert not is_public(addr)
    with pytest.raises(AddressRefused):
        HostPolicy().check_ip(ip, addr)


@pytest.mark.parametrize("ip", PUBLIC_IPS)
def test_public_addresses_pass(ip):
    assert is_public(ipaddress.ip_address(ip))
    HostPolicy().check_ip(ip, ipaddress.ip_address(ip))


@pytest.mark.parametrize("spelling,ip", [
    ("2130706433", "127.0.0.1"),  # decimal
    ("0x7f000001", "127.0.0.1"),  # hex
    ("0x7F.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),  # octal
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # short forms
    ("127.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("2852039166", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("10.1", "10.0.0.1"),
    ("0", "0.0.0.0"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
    ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
    ("[::1]", "::1"),
    ("::1%eth0", "::1"),
    ("127.0.0.1.", "127.0.0.1"),
])
def test_ip_spellings_are_parsed_and_refused(spelling, ip):
    assert parse_ip_literal(spelling) == ipaddress.ip_address(ip)


@pytest.mark.parametrize("name", ["example.com", "1.2.3.4.nip.io", "0x7f.example", "127.0.0.1.evil.com", "12ab"])
def test_names_are_not_ip_literals(name):
    assert parse_ip_literal(name) is None


def stub_resolver(table, calls=None):
    async def resolve(host, port):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise MediaError(f"cannot resolve host {host}")
        return table[host]
    return resolve


async def test_names_resolving_to_private_addresses_are_refused():
    table = {"evil.test": ["10.0.0.7"], "meta.test": ["169.254.169.254"], "mixed.test": ["93.184.216.34", "127.0.0.1"],
             "v6.test": ["::ffff:127.0.0.1"], "ok.test": ["93.184.216.34", "2606:4700:4700::1111"]}
    policy, resolver = HostPolicy(), stub_resolver(table)
    for host in ("evil.test", "meta.test", "mixed.test", "v6.test"):
        with pytest.raises(AddressRefused, match=host):
            await resolve_checked(host, 80, policy, resolver)
    assert await resolve_checked("ok.test", 443, policy, resolver) == ["93.184.216.34", "2606:4700:4700::1111"]


async def test_literals_and_metadata_names_are_refused_without_lookup():
    calls = []
    resolver = stub_resolver({}, calls)
    for host in ("2130706433", "0x7f.1", "::1", "metadata.google.internal", "metadata", "localhost", "a.localhost"):
        with pytest.raises(AddressRefused):
            await resolve_checked(host, 80, HostPolicy(), resolver)
    assert calls == []


async def test_allow_list_opens_exceptions():
    resolver = stub_resolver({"internal.corp": ["10.1.2.3"], "cdn.internal.corp": ["10.9.9.9"], "other.test": ["10.0.0.1"]})
    policy = HostPolicy(["internal.corp", "*.internal.corp", "192.168.0.0/16", "::1", "127.0.0.1"])
    assert await resolve_checked("internal.corp", 80, policy, resolver) == ["10.1.2.3"]
    assert await resolve_checked("cdn.internal.corp", 80, policy, resolver) == ["10.9.9.9"]
    assert await resolve_checked("192.168.7.7", 80, policy, resolver) == ["192.168.7.7"]
    assert await resolve_checked("[::1]", 80, policy, resolver) == ["::1"]
    assert await resolve_checked("0x7f.1", 80, policy, resolver) == ["127.0.0.1"]
    with pytest.raises(AddressRefused):
        await resolve_checked("other.test", 80, policy, resolver)
    with pytest.raises(AddressRefused):  # the allowed CIDR does not open 127.0.0.2
        await resolve_checked("127.0.0.2", 80, policy, resolver)
    with pytest.raises(ValueError):
        MediaConfig(allow_hosts=["10.0.0.0/33"])


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where the guarded backend would connect; never opens a socket."""

    def __init__(self):
        self.connects = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        raise httpcore.ConnectError("stub: no network in tests")

    async def sleep(self, seconds):  # pragma: no cover
        pass


async def test_connection_is_pinned_to_the_checked_ip():
    calls = []
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding resolver: public first, then loopback

    async def rebinding(host, port):
        calls.append(host)
        return next(answers)

    rec = RecordingBackend()
    backend = GuardedBackend(HostPolicy(), rebinding, rec)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("images.example", 443, timeout=1)
    assert rec.connects == [("93.184.216.34", 443)]  # the IP that was checked, not the name
    assert calls == ["images.example"]  # resolved once per connection: nothing to rebind
    with pytest.raises(AddressRefused):  # the next connection sees the new answer and refuses it
        await backend.connect_tcp("images.example", 443, timeout=1)
    assert rec.connects == [("93.184.216.34", 443)]


async def test_loader_refuses_private_targets_without_connecting():
    rec = RecordingBackend()
    resolver = stub_resolver({"evil.test": ["10.0.0.1"], "meta.test": ["169.254.169.254"], "v6.test": ["fd00:ec2::254"]})
    loader = MediaLoader(MediaConfig(), resolver=resolver, network_backend=rec)
    urls = ["http://10.0.0.1/a.jpg", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
            "http://2130706433/a.jpg", "http://0x7f.1/a.jpg", "http://127.1:8080/a.jpg", "http://[::ffff:127.0.0.1]/",
            "http://evil.test/a.jpg", "https://meta.test/", "http://v6.test/x", "http://metadata.google.internal/",
            "http://localhost:8000/x", "http://0177.0.0.1/"]
    for i, url in enumerate(urls):
        with pytest.raises(MediaError, match=rf"^messages\[0\]\.content\[{i}\]: ") as ei:
            await loader.load([MediaSpec("image", url, {}, f"messages[0].content[{i}]")])
        assert "refused" in str(ei.value) or "invalid URL" in str(ei.value), str(ei.value)
    assert rec.connects == []
    await loader.aclose()


async def test_other_schemes_and_credentials_are_refused():
    loader = MediaLoader(MediaConfig(allowed_local_roots=["/nonexistent"]))
    for url, msg in [("ftp://example.com/a.jpg", "scheme"), ("gopher://x/", "scheme"), ("file://remote.host/etc/passwd", "remote host"),
                     ("http://user:pw@example.com/a.jpg", "credentials")]:
        with pytest.raises(MediaError, match=msg):
            await loader.load([MediaSpec("image", url, {}, "m[0]")])
    with pytest.raises(MediaError, match="https"):
        await MediaLoader(MediaConfig(allow_http=False)).load([MediaSpec("image", "http://example.com/a.jpg", {}, "m[0]")])
