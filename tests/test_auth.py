"""Authentication and authorization of the server, over real sockets.

Static tokens (the built-in ``headwater.auth`` plugin) from the configuration and from
``HEADWATER_TOKENS``; rejection before the upgrade (HTTP 401); per-principal stream and
pipeline patterns; origins; run owners; a third-party plugin overriding the built-in one;
and the refusal to serve beyond localhost without authentication.
"""

from __future__ import annotations

from typing import Any

import pytest

import headwater
from headwater.client import ConnectFailed, RequestFailed
from headwater.server import Server, ServerConfigError, ServerError
from headwater.server.auth import TokenGrant, parse_tokens_env
from test_server_helpers import (
    client_of,
    config,
    http_get,
    json_body,
    make_plugins,
    of_type,
    running,
    until,
)

pytestmark = pytest.mark.anyio

TOKENS = {
    "alice-token": "alice",
    "bob-token": {"principal": "bob", "streams": ["errors-*"], "pipelines": ["count"]},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def secured(**fields: Any) -> Any:
    return config(auth={"tokens": TOKENS}, **fields)


async def refused(server: Server, **kwargs: Any) -> ConnectFailed:
    with pytest.raises(ConnectFailed) as info:
        async with client_of(server, **kwargs):
            pass  # pragma: no cover - refused before
    return info.value


async def test_no_token_or_a_wrong_token_is_rejected_before_the_upgrade() -> None:
    async with running(secured()) as server:
        assert server.auth.required
        error = await refused(server)
        assert error.status == 401
        assert "authentication required" in str(error)
        assert (await refused(server, token="guess")).status == 401
        assert (await refused(server, token="guess", token_in_query=True)).status == 401

        status, headers, _ = await http_get(f"{server.http_url}/api/streams")
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        assert (await http_get(f"{server.http_url}/api/components", "guess"))[0] == 401
        # liveness stays public
        assert (await http_get(f"{server.http_url}/healthz"))[0] == 200

        async with client_of(server, token="alice-token") as alice:
            assert await alice.ping() > 0
        async with client_of(server, token="alice-token", token_in_query=True) as alice:
            assert await alice.ping() > 0
        status, _, body = await http_get(f"{server.http_url}/api/components", "alice-token")
        assert status == 200
        assert json_body(body)["components"]


async def test_a_token_for_one_stream_but_not_another() -> None:
    async with running(secured()) as server:
        for stream in ("errors-app", "audit"):
            await server.manager.create_stream(stream)
        async with client_of(server, token="bob-token") as bob:
            await bob.subscribe("errors-app")
            with pytest.raises(RequestFailed) as info:
                await bob.subscribe("audit")
            assert info.value.code == "unauthorized"
            # not even told whether a stream it may not see exists
            with pytest.raises(RequestFailed) as info:
                await bob.subscribe("no-such-stream")
            assert info.value.code == "unauthorized"
            with pytest.raises(RequestFailed) as info:
                await bob.run("ticks")
            assert info.value.code == "unauthorized"
            # bob may run count, and follow and cancel his own run (its stream does not
            # match errors-*)
            started = await bob.run("count", {"stop": 2})
            assert started.stream.startswith("count-")
            end = await until(bob, of_type("stream_complete", started.stream))
            assert end[-1].reason == "succeeded"  # type: ignore[union-attr]
        async with client_of(server, token="alice-token") as alice:
            await alice.subscribe("audit")
        status, _, body = await http_get(f"{server.http_url}/api/streams", "bob-token")
        assert status == 200
        assert [s["stream"] for s in json_body(body)["streams"]] == ["errors-app"]


async def test_only_the_owner_or_an_authorized_principal_cancels_a_run() -> None:
    cfg = config(
        auth={
            "tokens": {
                "alice-token": "alice",
                "carol-token": {"principal": "carol", "streams": ["nothing"]},
            }
        }
    )
    async with running(cfg) as server, client_of(server, token="carol-token") as carol:
        started = await carol.run("ticks")
        async with client_of(server, token="alice-token") as alice:
            await alice.subscribe(started.stream)  # alice may see every stream
            await alice.cancel(run=started.run)
            end = await until(alice, of_type("stream_complete", started.stream))
            assert end[-1].reason == "cancelled"  # type: ignore[union-attr]
        started = await carol.run("ticks")
        # carol's patterns do not match her run's stream, but she owns it
        await carol.unsubscribe(started.stream)
        await carol.subscribe(started.stream)
        await carol.cancel(stream=started.stream)
        end = await until(carol, of_type("stream_complete", started.stream))
        assert end[-1].reason == "cancelled"  # type: ignore[union-attr]


async def test_tokens_from_the_environment() -> None:
    environ = {"HEADWATER_TOKENS": "env-token=dave:feed;news"}
    async with running(config(), environ=environ) as server:
        assert server.auth.required
        await server.manager.create_stream("feed")
        await server.manager.create_stream("other")
        assert (await refused(server)).status == 401
        async with client_of(server, token="env-token") as dave:
            await dave.subscribe("feed")
            with pytest.raises(RequestFailed):
                await dave.subscribe("other")
    # the configuration can ignore the environment
    async with running(config(auth={"env": False}), environ=environ) as server:
        assert not server.auth.required


def test_parse_tokens_env() -> None:
    assert parse_tokens_env(" a=alice , b=bob:errors-*;logs:count ,") == {
        "a": TokenGrant("alice"),
        "b": TokenGrant("bob", ("errors-*", "logs"), ("count",)),
    }
    for bad in ("alice", "=alice", "t=", "t=a:b:c:d"):
        with pytest.raises(ValueError, match="HEADWATER_TOKENS: entry 1") as info:
            parse_tokens_env(bad)
        assert "t=" not in str(info.value) or bad == "t="


async def test_no_authentication_means_localhost_only() -> None:
    with pytest.raises(
        ServerError, match=r"refusing to serve on 0\.0\.0\.0 without authentication"
    ):
        async with running(config(host="0.0.0.0")):
            pass  # pragma: no cover - refused
    # with authentication, any address may be bound (TLS waived here: see test_server_tls)
    async with running(secured(host="0.0.0.0", tls={"required": False})) as server:
        assert server.host == "0.0.0.0"
    # a malformed HEADWATER_TOKENS is a configuration error, not a crash
    with pytest.raises(ServerConfigError, match="HEADWATER_TOKENS"):
        async with running(config(), environ={"HEADWATER_TOKENS": "oops"}):
            pass  # pragma: no cover - refused


async def test_origins_are_checked_before_the_upgrade() -> None:
    async with running() as server:
        assert (await refused(server, origin="https://evil.example")).status == 403
        async with client_of(server, origin=f"http://localhost:{server.port}") as client:
            assert await client.ping() > 0
        async with client_of(server) as client:  # no Origin header: not a browser
            assert await client.ping() > 0
    async with running(config(origins=["https://dash.example"])) as server:
        assert (await refused(server, origin=f"http://127.0.0.1:{server.port}")).status == 403
        async with client_of(server, origin="https://dash.example") as client:
            assert await client.ping() > 0
    async with (
        running(config(origins=["*"])) as server,
        client_of(server, origin="https://anywhere.example") as client,
    ):
        assert await client.ping() > 0


class Gatekeeper:
    """A third-party authentication plugin: tokens are principals; it raises on 'boom'."""

    @headwater.hookimpl
    def authenticate(self, token: str | None) -> str | None:
        if token == "boom":
            raise RuntimeError("directory unreachable")
        return f"user:{token}" if token else None

    @headwater.hookimpl
    def authorize(self, principal: Any, action: str, target: str) -> bool | None:
        if principal == "user:admin":
            return True
        return None if target.startswith("public") else False


async def test_a_third_party_plugin_decides_and_its_errors_deny() -> None:
    plugins = make_plugins((Gatekeeper(), "gatekeeper"))
    async with running(config(auth={"required": True}), plugins=plugins) as server:
        await server.manager.create_stream("public-feed")
        await server.manager.create_stream("private")
        assert (await refused(server)).status == 401
        assert (await refused(server, token="boom")).status == 401  # an error denies
        async with client_of(server, token="someone") as someone:
            with pytest.raises(RequestFailed) as info:
                await someone.subscribe("private")
            assert info.value.code == "unauthorized"
            # no opinion about public-*: denied, since authentication is required
            with pytest.raises(RequestFailed):
                await someone.subscribe("public-feed")
        async with client_of(server, token="admin") as admin:
            await admin.subscribe("private")
    # the static tokens of the configuration still work beside it (asked after it)
    cfg = config(auth={"tokens": TOKENS})
    async with (
        running(cfg, plugins=make_plugins((Gatekeeper(), "gatekeeper"))) as server,
        client_of(server, token="alice-token") as client,
    ):
        assert await client.ping() > 0  # Gatekeeper accepts it as user:alice-token


def test_invalid_configuration_names_the_path() -> None:
    from headwater.server import parse_server_config

    with pytest.raises(ServerConfigError) as info:
        parse_server_config(
            {
                "port": 70000,
                "auth": {"tokens": {"x": {"principal": ""}}, "bogus": 1},
                "limits": {"rate": 0},
                "pipelines": {"bad": {"name": "bad", "sources": {}, "sinks": []}},
            }
        )
    text = str(info.value)
    assert "port: Input should be less than or equal to 65535" in text
    assert "auth.tokens.x.principal" in text
    assert "auth.bogus: unknown key" in text
    assert "limits.rate" in text
    with pytest.raises(ServerConfigError) as info:
        parse_server_config(
            {
                "pipelines": {
                    "bad": {"name": "bad", "sources": {}, "sinks": [{"sink": "null"}]},
                    "p": {
                        "pipeline": {
                            "name": "p",
                            "sources": {"n": {"action": "range"}},
                            "sinks": [{"sink": "null"}],
                        },
                        "params": {"x": "steps[3].params.y"},
                    },
                    "missing": "no/such/file.yaml",
                }
            }
        )
    text = str(info.value)
    assert "pipelines.bad.pipeline.sources:" in text
    assert "pipelines.p.params.x: steps[3].params.y:" in text
    assert "pipelines.missing.pipeline: cannot read" in text
