"""``headwater new-plugin``: the scaffold installs, its tests pass, headwater lists it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from headwater.cli import main
from headwater.scaffold import ScaffoldError, create_plugin, plugin_names
from venv_helpers import PluginVenv, make_plugin_venv


@pytest.mark.parametrize(
    ("name", "distribution", "package", "prefix"),
    [
        ("acme-weather", "acme-weather", "acme_weather", "acme_weather"),
        (
            "Acme.Weather_Station",
            "acme-weather-station",
            "acme_weather_station",
            "acme_weather_station",
        ),
        ("headwater-demo", "headwater-demo", "headwater_demo", "demo"),
        ("x", "x", "x", "x"),
    ],
)
def test_names(name: str, distribution: str, package: str, prefix: str) -> None:
    names = plugin_names(name)
    assert (names.distribution, names.package, names.prefix) == (distribution, package, prefix)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "not a valid plugin name"),
        ("-lead", "not a valid plugin name"),
        ("white space", "not a valid plugin name"),
        ("9lives", "not make a valid Python package name"),
        ("class", "not make a valid Python package name"),
        ("json", "would shadow"),
        ("headwater", "would shadow"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ScaffoldError, match=message):
        plugin_names(name)


def test_creates_the_files(tmp_path: Path) -> None:
    made = create_plugin("acme-weather", tmp_path / "acme")
    assert made.root == tmp_path / "acme"
    assert sorted(p.as_posix() for p in made.files) == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "src/acme_weather/__init__.py",
        "src/acme_weather/py.typed",
        "tests/test_acme_weather.py",
    ]
    pyproject = (made.root / "pyproject.toml").read_text()
    assert '[project.entry-points.headwater]\nacme_weather = "acme_weather"' in pyproject
    # no lower bound a checkout's version (or an unpublished headwater) could miss
    assert 'dependencies = ["headwater"]' in pyproject
    tests = (made.root / "tests" / "test_acme_weather.py").read_text()
    assert "assert_conforms(ACTION" in tests
    assert made.action == "acme_weather.count"
    for path in made.files:
        if path.suffix == ".py":
            source = (made.root / path).read_text()
            compile(source, str(path), "exec")


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "acme-weather").mkdir()
    (tmp_path / "acme-weather" / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        create_plugin("acme-weather", tmp_path / "acme-weather")
    assert (tmp_path / "acme-weather" / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    create_plugin("acme-weather", empty)  # an empty directory is fine


def test_cli_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "acme-weather"]) == 0
    out = capsys.readouterr().out
    assert "created plugin 'acme-weather' in acme-weather:" in out
    assert "src/acme_weather/__init__.py" in out
    assert "python -m pip install -e './acme-weather[test]'" in out
    assert "headwater plugins --check acme-weather" in out
    assert (tmp_path / "acme-weather" / "pyproject.toml").is_file()
    assert main(["new-plugin", "acme-weather"]) == 2  # exists now
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["new-plugin", "other", "--dir", str(tmp_path / "deep" / "dir")]) == 0
    assert (tmp_path / "deep" / "dir" / "src" / "other" / "__init__.py").is_file()
    assert main(["new-plugin", "no good"]) == 2


def test_generated_code_is_lint_clean(tmp_path: Path) -> None:
    from ruff.__main__ import find_ruff_bin  # in the test extra: never skipped

    made = create_plugin("acme-weather", tmp_path / "acme")
    for args in (["check", "--select", "E,F,W,I,UP,B,SIM,RUF"], ["format", "--check"]):
        proc = subprocess.run(
            [os.fsdecode(find_ruff_bin()), *args, "."],
            cwd=made.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scaffold_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[PluginVenv, Path]:
    base = tmp_path_factory.mktemp("scaffold-venv")
    env = make_plugin_venv(base)
    project = base / "acme-weather"
    # the command itself, as a user runs it, in the venv
    env.run("-m", "headwater", "new-plugin", "acme-weather", "--dir", str(project))
    env.pip_install(project, editable=True)
    return env, project


@pytest.mark.slow
def test_scaffold_tests_pass_right_after_install(scaffold_venv: tuple[PluginVenv, Path]) -> None:
    env, project = scaffold_venv
    proc = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", check=False, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


@pytest.mark.slow
def test_scaffold_installs_with_its_dependencies_offline(tmp_path: Path) -> None:
    # pip resolves the plugin's dependencies (headwater, pydantic, anyio) from what is
    # installed: no package index, as before headwater is published
    env = make_plugin_venv(tmp_path)
    project = tmp_path / "acme-weather"
    env.run("-m", "headwater", "new-plugin", "acme-weather", "--dir", str(project))
    args = ["-m", "pip", "install", "--no-index", "--no-build-isolation", "--quiet"]
    proc = env.run(*args, "-e", str(project), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = env.headwater_json("plugins")
    assert "acme_weather" in {p["name"] for p in listing["plugins"]}
    check = env.headwater_json("plugins", "--check", "acme-weather")
    runs = [r for r in check["results"] if r["check"] == "run"]
    assert runs == [
        {
            "component": "acme_weather.count",
            "kind": "action",
            "check": "run",
            "status": "pass",
            "detail": "5 items out",
        }
    ]


@pytest.mark.slow
def test_scaffold_is_listed_and_runs(scaffold_venv: tuple[PluginVenv, Path]) -> None:
    env, project = scaffold_venv
    listing = env.headwater_json("plugins")
    plugins = {p["name"]: p for p in listing["plugins"]}
    info = plugins["acme_weather"]
    assert (info["distribution"], info["version"]) == ("acme-weather", "0.1.0")
    assert info["components"] == ["action:acme_weather.count"]
    assert not [f for f in listing["failures"] if f["distribution"] == "acme-weather"]
    pipeline = env.workdir / "count.yaml"
    pipeline.write_text(
        "name: count\n"
        "sources: {n: {action: acme_weather.count, params: {stop: 3}}}\n"
        "sinks: [{sink: collect}]\n",
        encoding="utf-8",
    )
    result = env.headwater_json("run", str(pipeline), "--no-progress")
    assert result["outputs"] == {"collect": [0, 1, 2]}
    # editable: a change to the source is live without reinstalling
    module = project / "src" / "acme_weather" / "__init__.py"
    module.write_text(module.read_text().replace("Count from", "Count up from"))
    described = env.headwater_json("describe", "acme_weather.count")
    assert described["description"].startswith("Count up from")
