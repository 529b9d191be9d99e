"""Routes contributed by plugins (``register_routes``) on both front ends, and the ASGI
app mounted under ``/hw`` in a Starlette application (WebSocket, SSE, pages, routes).

Real sockets on 127.0.0.1: ``headwater serve``'s :class:`Server`, and uvicorn running
the ASGI app (alone, or inside Starlette). Waits are bounded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import headwater
from headwater.client import connect
from headwater.server import AsgiApp
from test_server_helpers import (
    FRONTS,
    WAIT,
    config,
    make_plugins,
    of_type,
    running,
    serve_asgi,
    until,
    uvicorn_port,
)
from test_server_sse import is_update, read_events

pytestmark = pytest.mark.anyio

TOKEN = "route-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


async def hello(request: headwater.HttpRequest) -> headwater.HttpResponse:
    return headwater.HttpResponse.json(
        {
            "name": request.path_params["name"],
            "principal": str(request.principal) if request.principal else None,
            "root": request.root_path,
            "q": request.query_value("q"),
        }
    )


async def echo(request: headwater.HttpRequest) -> headwater.HttpResponse:
    return headwater.HttpResponse(201, request.body[::-1], "application/octet-stream")


async def broken(request: headwater.HttpRequest) -> headwater.HttpResponse:
    raise RuntimeError("this handler is broken")


class RoutesPlugin:
    """Routes of every kind, and routes that try to shadow built-in ones."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @headwater.hookimpl
    def register_routes(self, register: Any) -> None:
        register(headwater.HttpRoute.get("/plugins/demo/hello/{name}", hello))
        register(headwater.HttpRoute("POST", "/plugins/demo/echo", echo))
        register(headwater.HttpRoute.get("/plugins/demo/broken", broken))
        register(headwater.HttpRoute.static("/plugins/demo/files", self.folder))
        register(headwater.HttpRoute.page("/plugins/demo/page", "<p>a page</p>"))
        register(headwater.HttpRoute.page("/healthz", "shadow"))
        register(headwater.HttpRoute.get("/api/{what}", hello))
        register(headwater.HttpRoute.page("/{anything}", "shadow"))


class SecondPlugin:
    @headwater.hookimpl
    def register_routes(self, register: Any) -> None:
        register(headwater.HttpRoute.page("/plugins/demo/page", "second"))
        register(headwater.HttpRoute.page("/plugins/second", "second"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    (files / "index.html").write_text("<h1>index</h1>")
    (files / "sub" / "data.json").write_text('{"ok": true}')
    (tmp_path / "secret.txt").write_text("outside")
    return files


def plugins(folder: Path) -> headwater.PluginManager:
    return make_plugins((RoutesPlugin(folder), "demo-routes"), (SecondPlugin(), "second"))


async def test_register_routes_serves_plugin_routes_on_both_front_ends(
    front: str, folder: Path
) -> None:
    async with (
        running(config(), plugins(folder), front=front) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=WAIT) as http,
    ):
        response = await http.get("/plugins/demo/hello/b%C3%B6b", params={"q": "x"})
        assert response.status_code == 200
        assert response.json() == {"name": "böb", "principal": None, "root": "", "q": "x"}
        response = await http.post("/plugins/demo/echo", content=b"abc")
        assert (response.status_code, response.content) == (201, b"cba")
        assert (await http.get("/plugins/demo/files/")).text == "<h1>index</h1>"
        response = await http.get("/plugins/demo/files/sub/data.json")
        assert response.json() == {"ok": True}
        assert response.headers["content-type"].startswith("application/json")
        for bad in ("/plugins/demo/files/nope", "/plugins/demo/files/..%2Fsecret.txt"):
            assert (await http.get(bad)).status_code == 404
        # pluggy calls the plugin registered last first: its page wins, the other is reported
        assert (await http.get("/plugins/demo/page")).text == "second"
        assert (await http.get("/plugins/second")).text == "second"
        # a handler that raises answers 500; the server goes on
        assert (await http.get("/plugins/demo/broken")).status_code == 500
        # built-in routes are not shadowed, and the clashes are reported
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/api/whatever")).status_code == 404
        assert (await http.get("/elsewhere")).status_code == 404
        failures = (await http.get("/api/components")).json()["failures"]
        skipped = sorted(f["error"].split(" skipped")[0] for f in failures)
        assert skipped == [
            "route GET /api/{what}",
            "route GET /healthz",
            "route GET /plugins/demo/page",
            "route GET /{anything}",
        ]
        assert {f["plugin"] for f in failures} == {"demo-routes"}


async def test_plugin_routes_need_a_token_like_the_api(front: str, folder: Path) -> None:
    cfg = config(auth={"tokens": {TOKEN: "alice"}})
    async with (
        running(cfg, plugins(folder), front=front) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=WAIT) as http,
    ):
        assert (await http.get("/plugins/demo/hello/x")).status_code == 401
        assert (await http.get("/plugins/demo/page")).status_code == 401
        assert (await http.post("/plugins/demo/echo", content=b"x")).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = await http.get("/plugins/demo/hello/x", headers=headers)
        assert response.json()["principal"] == "alice"
        http.cookies.set("headwater_token", TOKEN)
        response = await http.get("/plugins/second")
        assert (response.status_code, response.text) == (200, "second")
        # the cookie is not accepted for other methods than GET
        response = await http.post("/plugins/demo/echo", content=b"x")
        assert response.status_code == 401


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the host application")


async def test_the_asgi_app_mounted_under_a_prefix_in_starlette(folder: Path) -> None:
    hw = AsgiApp(config(), plugins=plugins(folder), environ={})
    host = Starlette(routes=[Route("/", home), Mount("/hw", app=hw)], lifespan=hw.lifespan)
    async with serve_asgi(host) as uv:
        port = uvicorn_port(uv)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
            assert (await http.get("/")).text == "the host application"
            page = await http.get("/hw/")
            assert page.status_code == 200
            assert 'src="./static/dashboard.js"' in page.text  # relative: works under /hw
            assert (await http.get("/hw/static/dashboard.js")).status_code == 200
            assert (await http.get("/hw/healthz")).json()["status"] == "ok"
            assert (await http.get("/healthz")).status_code == 404  # not the host's
            response = await http.get("/hw/plugins/demo/hello/x")
            assert response.json()["root"] == "/hw"

            await hw.manager.create_stream("feed")
            async with connect(f"ws://127.0.0.1:{port}/hw/ws") as client:
                await client.subscribe("feed")
                async with http.stream("GET", f"{base}/hw/api/streams/feed/events") as sse:
                    assert sse.status_code == 200
                    await hw.manager.push("feed", {"n": 1})
                    events = await read_events(sse, is_update(1))
                    ws = await until(client, of_type("stream_update"))
            assert events[-1].data == json.loads(ws[-1].model_dump_json())
        assert hw.running
    assert not hw.running  # the host's lifespan stopped it


async def test_an_asgi_app_that_was_not_started_says_how_to_start_it() -> None:
    app = AsgiApp(config(), plugins=make_plugins(), environ={})
    host = Starlette(routes=[Mount("/hw", app=app)])  # no lifespan: never started
    async with serve_asgi(host) as uv:
        url = f"http://127.0.0.1:{uvicorn_port(uv)}/hw/healthz"
        async with httpx.AsyncClient(timeout=WAIT) as http:
            response = await http.get(url)
    assert response.status_code == 503
    assert "lifespan=app.lifespan" in response.json()["message"]


class EnginePlugin:
    """A route that answers from its own engine's services, never a module's."""

    @headwater.hookimpl
    def register_routes(self, register: Any) -> None:
        register(headwater.HttpRoute.get("/plugins/engine/roots", engine_roots))


async def engine_roots(request: headwater.HttpRequest) -> headwater.HttpResponse:
    assert request.services is not None
    return headwater.HttpResponse.json([str(root) for root in request.services.policy.roots])


async def test_plugin_routes_reach_their_own_engine(front: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    answers = []
    for root in (first, second):
        base = config()
        config_ = base.model_copy(
            update={"sandbox": type(base.sandbox).model_validate({"roots": [str(root)]})}
        )
        plugins_ = make_plugins((EnginePlugin(), "engine-routes"))
        async with (
            running(config_, plugins_, front=front) as server,
            httpx.AsyncClient(base_url=server.http_url, timeout=WAIT) as http,
        ):
            answers.append((await http.get("/plugins/engine/roots")).json())
    assert answers == [[str(first.resolve())], [str(second.resolve())]]
