"""``headwater plugins --check [PLUGIN] [--params JSON]``: conformance checks and real runs
of the components that declare samples (or are given params)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import headwater
from headwater import Register
from headwater.cli import main
from headwater.cli import plugins as cli_plugins


class ScaleParams(BaseModel):
    factor: int = 1


@headwater.transformer(
    "demo.scale",
    params=ScaleParams,
    sample_params={"factor": 3},
    sample_input=[1, 2],
)
def scale(item: int, params: ScaleParams) -> int:
    return item * params.factor


@headwater.transformer("demo.broken", sample_params={}, sample_input=[1])
def broken(item: int) -> int:
    raise RuntimeError("broken on purpose")


class NoteParams(BaseModel):
    path: str


@headwater.sink("demo.note", params=NoteParams)
def note(batch: list[Any], params: NoteParams, ctx: headwater.StreamContext) -> None:
    with open(params.path, "a", encoding="utf-8") as out:
        out.writelines(f"{json.dumps(item)}\n" for item in batch)


def _plugin(*components: headwater.Component) -> object:
    class Plugin:
        @headwater.hookimpl
        def register_transformers(self, register: Register) -> None:
            for component in components:
                if component.kind == "transformer":
                    register(component)

        @headwater.hookimpl
        def register_sinks(self, register: Register) -> None:
            for component in components:
                if component.kind == "sink":
                    register(component)

    return Plugin()


@pytest.fixture
def with_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's plugin manager also holds a plugin ``demo`` (scale and note)."""
    real = cli_plugins._plugin_manager

    def manager(*args: Any, **kwargs: Any) -> headwater.PluginManager:
        built = real(*args, **kwargs)
        built.register(_plugin(scale, note), "demo")
        return built

    monkeypatch.setattr(cli_plugins, "_plugin_manager", manager)


def _check_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["plugins", "--check", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _runs(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        r["component"]: (r["status"], r["detail"]) for r in data["results"] if r["check"] == "run"
    }


def test_builtin_transformers_run_their_samples(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _check_json(capsys, "headwater.transformers")
    assert code == 0
    runs = _runs(data)
    assert runs["map"] == ("pass", "2 items out")
    assert runs["filter"] == ("pass", "1 item out")  # expr n > 1 keeps one of two
    assert runs["take"] == ("pass", "2 items out")
    # only the components of that plugin were checked
    assert {r["kind"] for r in data["results"]} == {"transformer"}
    assert data["summary"]["failed"] == 0
    assert data["summary"]["checked"] >= 6


def test_one_plugin_by_name_runs_and_skips_with_reasons(
    with_demo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = _check_json(capsys, "demo")
    assert code == 0
    assert {r["component"] for r in data["results"]} == {"demo.scale", "demo.note"}
    runs = _runs(data)
    assert runs["demo.scale"] == ("pass", "2 items out")
    status, why = runs["demo.note"]
    assert status == "skip"
    assert "side effects" in why
    assert "--params" in why
    assert data["summary"] == {"checked": 1, "skipped": 1, "failed": 0}

    assert main(["plugins", "--check", "demo"]) == 0
    out = capsys.readouterr().out
    assert "checked 1, skipped 1, failed 0" in out


def test_given_params_run_a_sink_for_real(
    with_demo: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "notes.jsonl"
    params = json.dumps({"demo.note": {"path": str(target)}})
    code, data = _check_json(capsys, "demo", "--params", params)
    assert code == 0
    assert _runs(data)["demo.note"] == ("pass", "wrote 3 items")
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert data["summary"] == {"checked": 2, "skipped": 0, "failed": 0}


def test_invalid_given_params_fail(with_demo: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _check_json(capsys, "demo", "--params", '{"demo.note": {"path": 5}}')
    assert code == 1
    status, detail = _runs(data)["demo.note"]
    assert status == "fail"
    assert "path" in detail
    assert data["summary"]["failed"] == 1


def test_a_failing_run_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = cli_plugins._plugin_manager

    def manager(*args: Any, **kwargs: Any) -> headwater.PluginManager:
        built = real(*args, **kwargs)
        built.register(_plugin(broken), "shaky")
        return built

    monkeypatch.setattr(cli_plugins, "_plugin_manager", manager)
    assert main(["plugins", "--check", "shaky"]) == 1
    captured = capsys.readouterr()
    assert "broken on purpose" in " ".join(captured.out.replace("│", " ").split())
    assert "checked 0, skipped 0, failed 1" in captured.out
    assert "failed a conformance check or its run" in captured.err


def test_usage_errors_are_reported(with_demo: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--check", "nowhere"]) == 2
    assert "no plugin or distribution named 'nowhere'" in capsys.readouterr().err
    assert main(["plugins", "--check", "demo", "--params", "{not json"]) == 2
    assert "--params: not valid JSON" in capsys.readouterr().err
    assert main(["plugins", "--check", "demo", "--params", '{"stop": 3}']) == 2
    assert "no component named 'stop'" in capsys.readouterr().err
    assert main(["plugins", "--params", "{}"]) == 2
    assert "--params goes with --check" in capsys.readouterr().err
