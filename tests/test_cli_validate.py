"""``headwater validate --print`` and ``--check-connections``, and the "did you mean" of
unknown keys, run as ``python -m headwater`` in a temporary folder."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from test_cli import hw, write

PROBE_PLUGIN = """\
import socket

from pydantic import BaseModel

import headwater


class ProbeParams(BaseModel):
    host: str = "127.0.0.1"
    port: int


def probe_check(params, ctx):
    \"\"\"Open a TCP connection to the address and close it.\"\"\"
    with socket.create_connection((params.host, params.port), timeout=5):
        pass
    return f"reached {params.host}:{params.port}"


async def probe(params, ctx):
    \"\"\"One item.\"\"\"
    yield params.port


probe = headwater.action("demo.probe", params=ProbeParams, check=probe_check)(probe)


@headwater.hookimpl
def register_actions(register):
    register(probe)
"""


@pytest.fixture
def probe_plugin(tmp_path: Path) -> dict[str, str]:
    """The environment of a real (tiny) distribution whose action offers a check."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hw_probe_plugin.py").write_text(PROBE_PLUGIN)
    info = site / "hw_probe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hw-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[headwater]\nprobe = hw_probe_plugin\n")
    return {"PYTHONPATH": str(site)}


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SECRET = """\
name: secret
sources: {n: {action: range, params: {stop: 3}}}
steps: [{transformer: map, params: {expr: "item * 2"}}]
sinks: [{sink: jsonl, params: {path: "${OUT_FILE}"}}]
"""


def test_print_shows_overrides_defaults_and_masks_secrets(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SECRET)
    env = {"OUT_FILE": "hidden-name.jsonl"}
    proc = hw("validate", pipeline, "--print", "--set", "batch_size=7", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["batch_size"] == 7  # the override
    assert doc["sources"]["n"]["params"] == {"start": 0, "stop": 3, "step": 1, "chunk": 4096}
    assert doc["steps"][0]["params"]["expr"] == "item * 2"
    assert doc["sinks"][0]["params"]["path"] == "***"  # substituted: masked
    assert doc["sinks"][0]["params"]["append"] is False  # the sink's default
    assert "hidden-name" not in proc.stdout + proc.stderr
    assert "OK: pipeline 'secret'" in proc.stderr  # stdout stays the document

    as_json = hw("validate", pipeline, "--print", "--json", cwd=tmp_path, env=env)
    assert json.loads(as_json.stdout)["sinks"][0]["params"]["path"] == "***"


def test_check_connections_checks_what_offers_a_check(
    tmp_path: Path, probe_plugin: dict[str, str], listening: int
) -> None:
    text = f"""\
    name: probed
    sources: {{p: {{action: demo.probe, params: {{port: {listening}}}}}}}
    sinks: [{{sink: collect}}]
    """
    pipeline = write(tmp_path, "p.yaml", text)
    proc = hw("validate", pipeline, "--check-connections", cwd=tmp_path, env=probe_plugin)
    assert proc.returncode == 0, proc.stderr
    assert f"sources.p (demo.probe)  OK: reached 127.0.0.1:{listening}" in proc.stdout
    assert "sinks.collect           no check: sink 'collect' declares no connection check" in (
        proc.stdout
    )
    assert "connections: 1 OK, 1 no check" in proc.stdout

    pipeline = write(tmp_path, "q.yaml", text.replace(str(listening), str(closed_port())))
    proc = hw("validate", pipeline, "--check-connections", cwd=tmp_path, env=probe_plugin)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sources.p (demo.probe)  FAILED: ConnectionRefusedError" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "issue"),
    [
        ("sorces: {}\n", "sorces: unknown key; did you mean 'sources'?"),
        (
            "sources: {n: {action: range, parms: {stop: 3}}}\n",
            "sources.n.parms: unknown key; did you mean 'params'?",
        ),
        (
            "sources: {n: {action: range, params: {stpo: 3}}}\n",
            "sources.n.params.stpo: unknown key; did you mean 'stop' or 'step'?",
        ),
        ("sinks: [{sink: collect, on_eror: skip}]\n", "did you mean 'on_error'?"),
    ],
)
def test_unknown_keys_suggest_the_closest(tmp_path: Path, text: str, issue: str) -> None:
    base = "name: p\nsources: {n: {action: range, params: {stop: 3}}}\nsinks: [{sink: collect}]\n"
    data = yaml.safe_load(base)
    data.update(yaml.safe_load(text))
    pipeline = write(tmp_path, "p.yaml", yaml.safe_dump(data))
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert proc.returncode == 2
    assert issue in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_key_far_from_every_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", "name: p\nsources: {}\nzzzz: 1\nsinks: []\n")
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert proc.returncode == 2
    assert "zzzz: unknown key\n" in proc.stderr  # the message alone: no "did you mean"


def test_plugins_and_describe_show_plain_text_not_markup(tmp_path: Path) -> None:
    listing = hw("plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if " filter " in ln)
    assert "fn(item)" in line
    assert "`" not in listing.stdout
    described = hw("describe", "filter", cwd=tmp_path)
    assert described.returncode == 0, described.stderr
    assert "Keep the items for which fn(item) or expr is true." in described.stdout
    head = described.stdout.split("params JSON schema")[0]  # the schema stays verbatim
    assert "``" not in head


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        ("``fn(item)`` or ``expr``", "fn(item) or expr"),
        (":class:`~headwater.core.engine.Engine`", "Engine"),
        (":func:`headwater.run`", "headwater.run"),
        (":ref:`the protocol <protocol>`", "the protocol"),
        ("**bold** and *em*, 2*3*4", "bold and em, 2*3*4"),
        ("`a link`_ here", "a link here"),
    ],
)
def test_plain_text_strips_rst(markup: str, plain: str) -> None:
    from headwater.cli._common import _plain_text

    assert _plain_text(markup) == plain
