"""The ``Host`` header check that defeats DNS rebinding, on both front ends.

A page of ``attacker.example`` whose name was rebound to 127.0.0.1 reaches the local
server as a same-origin page: only its ``Host`` header gives it away. Every request
naming a host the server does not answer for gets 421, whatever it asks for (the API,
the metrics, the dashboard, an event stream, a WebSocket upgrade). Real sockets on
127.0.0.1; the allow-list parser is also checked on generated input.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.server.config import ServerConfig
from headwater.server.hosts import HostPolicy, default_hosts, parse_host
from test_server_helpers import FRONTS, WAIT, Served, config, running

pytestmark = pytest.mark.anyio

ATTACKER = "attacker.example"
PATHS = ("/api/streams", "/api/dashboard", "/metrics", "/healthz", "/", "/api/streams/s/events")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


async def get(server: Served, path: str, host: str) -> tuple[int, bytes]:
    """``GET path`` with ``Host: host`` (an event stream is read up to its first event)."""

    def fetch() -> tuple[int, bytes]:
        request = urllib.request.Request(server.http_url + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, response.read(1)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await anyio.to_thread.run_sync(fetch)


async def upgrade(server: Served, host: str) -> bytes:
    """The status line of a WebSocket upgrade with ``Host: host``."""
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with anyio.fail_after(WAIT):
        async with await anyio.connect_tcp("127.0.0.1", server.port) as conn:
            await conn.send(request.encode())
            data = b""
            while b"\r\n" not in data:
                data += await conn.receive()
    return data.split(b"\r\n", 1)[0]


async def test_a_foreign_host_gets_421_everywhere_without_authentication(front: str) -> None:
    async with running(front=front) as server:
        await server.manager.create_stream("s")
        for path in PATHS:
            status, body = await get(server, path, ATTACKER)
            assert status == 421, (path, status, body)
            answer = json.loads(body)
            assert answer["error"] == "Misdirected Request"
            assert "Host 'attacker.example' is not a name of this server" in answer["message"]
            assert "allowed_hosts" in answer["message"]
            status, _ = await get(server, path, f"{ATTACKER}:{server.port}")
            assert status == 421, path
        assert b" 421 " in await upgrade(server, ATTACKER)
        assert b" 101 " in await upgrade(server, f"127.0.0.1:{server.port}")

        # this machine's names, with the server's port or none
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
            status, _ = await get(server, "/api/streams", host)
            assert status == 200, host
        status, _ = await get(server, "/api/streams", f"[::1]:{server.port}")
        assert status == 200
        # another port: refused by serve, which knows its port; the ASGI app cannot know
        # the port a proxy is reached on, so it takes loopback names with any port
        status, _ = await get(server, "/api/streams", "localhost:1")
        assert status == (421 if front == "serve" else 200)


async def test_allowed_hosts_replace_the_default(front: str) -> None:
    cfg = config(allowed_hosts=["streams.example", ".corp.example", "exact.example:8443"])
    async with running(cfg, front=front) as server:
        for host, status in (
            ("streams.example", 200),
            ("STREAMS.example:1234", 200),
            ("corp.example", 200),
            ("a.b.corp.example:80", 200),
            ("exact.example:8443", 200),
            ("exact.example", 421),
            ("evilcorp.example", 421),
            (f"127.0.0.1:{server.port}", 421),
            (ATTACKER, 421),
        ):
            assert (await get(server, "/api/streams", host))[0] == status, host
    async with running(config(allowed_hosts=["*"]), front=front) as server:
        assert (await get(server, "/api/streams", ATTACKER))[0] == 200


async def test_the_host_check_comes_before_authentication(front: str) -> None:
    cfg = config(auth={"tokens": {"t0ken": "ada"}})
    async with running(cfg, front=front) as server:
        assert (await get(server, "/api/streams", ATTACKER))[0] == 421
        assert (await get(server, "/api/streams", f"localhost:{server.port}"))[0] == 401


def test_bad_allow_list_entries_are_named() -> None:
    from headwater.server.config import ServerConfigError, parse_server_config

    with pytest.raises(ServerConfigError) as info:
        parse_server_config({"allowed_hosts": ["ok.example", "bad host", "h:99999", "::1"]})
    text = str(info.value)
    assert "allowed_hosts[1]: 'bad host' is not HOST" in text
    assert "allowed_hosts[2]" in text
    assert "allowed_hosts[3]" in text  # an IPv6 address needs brackets
    assert "allowed_hosts[0]" not in text
    assert ServerConfig(allowed_hosts=["[::1]:8765"]).host_policy() is not None


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("Example.COM", ("example.com", None)),
        ("example.com.:80", ("example.com", 80)),
        ("[::1]:8765", ("[::1]", 8765)),
        ("[::1]", ("[::1]", None)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("::1", None),
        ("host:", None),
        ("host:65536", None),
        ("a b", None),
        ("user@host", None),
        ("", None),
        ("[::1]x", None),
    ],
)
def test_parse_host(value: str, parsed: Any) -> None:
    assert parse_host(value) == parsed


def test_the_default_is_this_machine_and_the_server_address() -> None:
    policy = default_hosts(("0.0.0.0", 8765), ("192.0.2.7", 8765))
    for host in ("localhost", "localhost:8765", "192.0.2.7:8765", "[::1]:8765", "0.0.0.0"):
        assert policy.allows(host), host
    for refused in ("localhost:8766", "192.0.2.8", "attacker.example:8765", None, ""):
        assert not policy.allows(refused), refused


@given(st.text(max_size=40))
def test_any_host_header_is_answered_without_error(value: str) -> None:
    policy = HostPolicy.parse(["example.com", ".corp.example", "[::1]:1"])
    allowed = policy.allows(value)
    parsed = parse_host(value)
    if allowed:
        assert parsed is not None
        host, port = parsed
        assert (
            host == "example.com"
            or host.endswith("corp.example")
            or (host, port)
            == (
                "[::1]",
                1,
            )
        )
    if parsed is not None:
        assert parsed[0] == parsed[0].lower()
        assert parsed[1] is None or 0 <= parsed[1] <= 65535
