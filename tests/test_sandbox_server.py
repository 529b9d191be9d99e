"""The server's sandbox: its configuration's ``sandbox`` section becomes its engine's
policy, and the params a client sets in ``run`` meet that policy.

A real :class:`~headwater.server.Server` (and a real ``headwater serve``) on 127.0.0.1;
the client is the ``websockets`` library, speaking protocol v1 frame by frame.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

import headwater
from headwater.builtin_plugins.catalogue import files as builtin_files
from headwater.server import Server
from headwater.server.config import ServerConfigError, load_server_config, parse_server_config
from test_server_cli import Lines
from test_server_cli import headwater as headwater_process
from test_server_helpers import WAIT, make_plugins

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``site/serve.yaml`` rooted at ``site/data`` (relative), with a secret beside it."""
    site = tmp_path.resolve() / "site"
    (site / "data").mkdir(parents=True)
    (site / "data" / "ok.txt").write_text("hello\nworld\n")
    (site / "secret.txt").write_text("do not read\n")
    (site / "data" / "link").symlink_to("../secret.txt")
    (site / "serve.yaml").write_text(
        "port: 0\n"
        "sandbox: {roots: [data]}\n"
        "pipelines:\n"
        "  view:\n"
        "    pipeline:\n"
        "      name: view\n"
        f"      sources: {{f: {{action: file.view, params: {{path: {site}/data/ok.txt}}}}}}\n"
        "      sinks: [{sink: websocket}]\n"
        "    params: {path: sources.f.params.path}\n"
    )
    return site


async def request(ws: ClientConnection, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``message``; return the replies up to its ``error`` or its run's end."""
    await ws.send(json.dumps(message))
    replies: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        while True:
            reply = json.loads(await ws.recv())
            replies.append(reply)
            if reply["type"] in ("error", "stream_complete"):
                return replies


@asynccontextmanager
async def served(site: Path) -> AsyncIterator[Server]:
    """The site's server on its own engine, started from another working directory."""
    config = load_server_config(site / "serve.yaml")
    plugins = make_plugins((builtin_files, "headwater.files"))
    async with Server(config, plugins=plugins, base_dir=site) as server:
        yield server


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "LINK",
        "/proc/self/environ",
    ],
)
async def test_a_client_cannot_set_a_path_out_of_the_roots(site: Path, path: str) -> None:
    path = path.replace("LINK", str(site / "data" / "link"))
    async with served(site) as server, ws_connect(server.url) as ws:
        [reply] = await request(
            ws, {"type": "run", "pipeline": "view", "params": {"path": path}, "id": 1}
        )
        assert reply["type"] == "error"
        assert reply["code"] == "invalid_params"
        assert reply["ref"] == 1
        assert f"sources.f.params.path: {path!r}" in reply["message"]
        if path.startswith("/proc"):
            assert "never open" in reply["message"]
        else:
            assert f"outside the allowed roots ('{site / 'data'}')" in reply["message"]
        assert not list(server.runs)
        # the connection stays usable, and a path inside the root runs
        replies = await request(
            ws,
            {
                "type": "run",
                "pipeline": "view",
                "params": {"path": str(site / "data" / "ok.txt")},
                "id": 2,
            },
        )
        lines = [r["data"]["text"] for r in replies if r["type"] == "stream_update"]
        assert lines == ["hello", "world"]
        assert replies[-1]["reason"] == "succeeded"


async def test_the_sandbox_section_is_the_server_engines_policy(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site.parent)  # relative roots start at the file's folder, not here
    monkeypatch.setenv("HEADWATER_ALLOW_HOSTS", "db.internal")
    async with served(site) as server:
        policy = server.engine.policy
        assert policy.roots == (site / "data",)
        assert policy.hosts == ("db.internal",)  # what the section leaves out: environment
    # the named pipelines are validated against it at start: a default path outside fails
    text = (site / "serve.yaml").read_text().replace("data/ok.txt", "secret.txt")
    assert "secret.txt" in text
    (site / "serve.yaml").write_text(text)
    with pytest.raises(ServerConfigError, match=r"pipelines\.view\.sources\.f\.params\.path"):
        async with served(site):
            pass


def test_the_sandbox_section_is_validated_and_documented(tmp_path: Path) -> None:
    config = parse_server_config(
        {
            "sandbox": {
                "roots": ["data", "/srv/logs"],
                "callables": ["mypkg.fns"],
                "commands": ["git"],
                "command_env": ["PYTHONPATH"],
                "hosts": ["*.internal"],
            }
        }
    )
    policy = config.sandbox.policy(tmp_path, environ={})
    assert policy.roots == (tmp_path.resolve() / "data", Path("/srv/logs"))
    assert policy.callables == ("mypkg.fns",)
    assert policy.commands == ("git",)
    assert policy.command_env == ("PYTHONPATH",)
    assert policy.hosts == ("*.internal",)
    # nothing set: the environment's policy, rooted at the working directory
    default = parse_server_config({}).sandbox.policy(tmp_path, environ={})
    assert default.roots == (Path.cwd().resolve(),)
    assert default.commands is None
    for bad, where in (
        ({"roots": []}, "sandbox.roots"),
        ({"roots": "data"}, "sandbox.roots"),
        ({"unrestricted": True}, "sandbox.unrestricted"),
    ):
        with pytest.raises(ServerConfigError) as info:
            parse_server_config({"sandbox": bad})
        assert [i.path for i in info.value.issues] == [where]


def test_an_embedders_engine_keeps_its_own_policy(site: Path) -> None:
    policy = headwater.SandboxPolicy(roots=(site,))
    engine = headwater.Engine(policy=policy)
    server = Server(load_server_config(site / "serve.yaml"), engine=engine, base_dir=site)
    assert server.engine.policy is policy


async def test_headwater_serve_applies_the_sandbox_section(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEADWATER_ROOTS")  # the operator's own environment
    config = "site/serve.yaml"
    async with headwater_process("serve", "--config", config, cwd=site.parent) as proc:
        err = Lines(proc.stderr)
        port = int((await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            message = {"type": "run", "pipeline": "view", "params": {"path": "/etc/passwd"}}
            [reply] = await request(ws, message)
            assert reply["code"] == "invalid_params"
            assert str(site / "data") in reply["message"]
            message["params"] = {"path": "site/data/ok.txt"}  # relative to its working dir
            replies = await request(ws, message)
            assert replies[-1]["reason"] == "succeeded", replies
