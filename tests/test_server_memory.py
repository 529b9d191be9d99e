"""What a server keeps of connections that have gone, and the ``server-memory`` benchmark.

A client that vanishes (its TCP connection dropped, no closing handshake) leaves an error
on the server's end of the connection; its traceback would hold the frames of the write
that failed (the data, the transport, the connection): a reference cycle that only the
cyclic garbage collector frees, so a flood of such clients piled their last writes up
(the ``server-memory`` scenario measured it). The server keeps the error, not its
traceback. Real server on 127.0.0.1, real ``websockets`` clients, a real benchmark run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from test_server_helpers import WAIT, Served, config, running

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server_side(server: Served) -> ServerConnection:
    """The server's end of the only connection it has."""
    (session,) = server.app._sessions
    conn = getattr(session.conn, "conn", None)  # the websockets front end's connection
    assert isinstance(conn, ServerConnection)
    return conn


async def test_a_vanished_client_leaves_no_traceback_on_the_server() -> None:
    async with running(config(limits={"rate": 1000, "burst": 1000})) as server:
        manager = server.manager
        await manager.create_stream("s", inactivity_timeout=None)
        await manager.push_many("s", ["x" * 1000] * manager.config.replay_max_chunks)
        kept = []
        for _ in range(3):
            async with connect(server.url, max_size=None) as ws:
                ours = server_side(server)
                message = {"type": "subscribe", "stream": "s", "since": 0, "id": 1}
                await ws.send(json.dumps(message))
                with anyio.fail_after(WAIT):
                    while json.loads(await ws.recv())["type"] != "subscribed":
                        pass
                ws.transport.abort()  # gone, in the middle of the replay
                with anyio.fail_after(WAIT):
                    await ours.wait_closed()
                    while server.connections:  # noqa: ASYNC110 - a session's end has no event
                        await anyio.sleep(0.01)
                kept.append(ours.connection_exc)
    errors = [error for error in kept if error is not None]
    assert errors, "the server saw no broken connection"
    assert [error.__traceback__ for error in errors] == [None] * len(errors)


def test_the_server_memory_scenario_reports_rss_per_round(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--rounds",
            "2",
            "--n",
            "20",
            "--json",
            str(out),
            "server-memory",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = json.loads(out.read_text())["server-memory"]
    assert set(rows) == {"start", "round  1", "round  2"}
    assert all(row["rss_bytes"] > 10e6 for row in rows.values())
    assert "RSS added by rounds 5-10" in proc.stdout
