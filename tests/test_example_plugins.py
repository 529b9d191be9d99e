"""The example plugins under ``example_plugins/``, pip-installed like a third party's.

headwater-tabular, headwater-sysmon, headwater-codegen and headwater-knowledge are built
and installed with pip (offline: ``--no-deps --no-build-isolation --no-index``) into a
temporary virtual environment. There ``headwater plugins --json`` must list each with its
distribution and version, one pipeline per plugin must run through ``headwater run``, and
each plugin's own test suite (and README) must pass against the installed package.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from venv_helpers import PluginVenv, make_plugin_venv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_plugins"
EXPECTED = {
    # distribution: (plugin / entry point, components)
    "headwater-tabular": (
        "headwater_tabular",
        ["action:tabular.read", "transformer:tabular.enrich", "transformer:tabular.stats"],
    ),
    "headwater-sysmon": (
        "headwater_sysmon",
        ["action:sysmon.status", "transformer:sysmon.alerts"],
    ),
    "headwater-codegen": ("headwater_codegen", ["action:codegen.client"]),
    "headwater-knowledge": (
        "headwater_knowledge",
        [
            "action:knowledge.files",
            "action:knowledge.fts",
            "action:knowledge.search",
            "action:knowledge.web",
            "transformer:knowledge.enrich",
            "transformer:knowledge.rank",
            "transformer:knowledge.synthesize",
        ],
    ),
}


@pytest.fixture(scope="module")
def examples_venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    base = tmp_path_factory.mktemp("examples-venv")
    return make_plugin_venv(base, [EXAMPLES / name for name in EXPECTED])


def write(env: PluginVenv, name: str, text: str) -> Path:
    path = env.workdir / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run_json(env: PluginVenv, pipeline: Path) -> dict[str, Any]:
    result: dict[str, Any] = env.headwater_json("run", str(pipeline), "--no-progress")
    assert result["state"] == "succeeded", result
    return result


@pytest.mark.slow
def test_installed_only_in_the_venv(examples_venv: PluginVenv) -> None:
    proc = examples_venv.run(
        "-c",
        "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in "
        "m.distributions() if d.metadata['Name'].startswith('headwater-')))",
    )
    assert proc.stdout.strip() == str(sorted(EXPECTED))
    import importlib.util

    assert importlib.util.find_spec("headwater_tabular") is None  # not in this environment


@pytest.mark.slow
def test_plugins_json_lists_every_example(examples_venv: PluginVenv) -> None:
    listing = examples_venv.headwater_json("plugins")
    plugins = {p["name"]: p for p in listing["plugins"]}
    components = {(c["kind"], c["name"]): c for c in listing["components"]}
    for distribution, (plugin, expected) in EXPECTED.items():
        info = plugins[plugin]
        assert info["distribution"] == distribution
        assert info["version"] == "0.1.0"
        assert info["module"] == plugin
        assert not info["disabled"]
        assert sorted(info["components"]) == expected
        for ref in expected:
            kind, _, name = ref.partition(":")
            meta = components[(kind, name)]
            assert (meta["plugin"], meta["distribution"], meta["version"]) == (
                plugin,
                distribution,
                "0.1.0",
            )
            assert meta["description"]
            assert meta["params_schema"]["type"] == "object"
    assert not [f for f in listing["failures"] if f["distribution"] in EXPECTED]


@pytest.mark.slow
def test_tabular_pipeline_runs(examples_venv: PluginVenv) -> None:
    write(
        examples_venv,
        "sales.csv",
        """\
        region,price,qty
        north,1.5,10
        south,2,3
        north,0.25,40
        """,
    )
    pipeline = write(
        examples_venv,
        "sales.yaml",
        """\
        name: sales
        sources:
          rows: {action: tabular.read, params: {path: sales.csv}}
        steps:
          - {transformer: tabular.enrich, params: {compute: {total: "price * qty"}}}
          - {transformer: tabular.stats, params: {fields: [total], group_by: region}}
        sinks:
          - {sink: collect}
        """,
    )
    [final] = run_json(examples_venv, pipeline)["outputs"]["collect"]
    assert final["final"] is True
    assert final["records"] == 3
    assert final["groups"]["north"]["total"]["sum"] == 25.0
    assert final["groups"]["south"]["total"]["count"] == 1


@pytest.mark.slow
def test_sysmon_pipeline_runs(examples_venv: PluginVenv) -> None:
    pipeline = write(
        examples_venv,
        "watch.yaml",
        """\
        name: watch
        sources:
          host: {action: sysmon.status, params: {interval: 0.05, count: 2, top: 2}}
        sinks:
          - {sink: collect}
        """,
    )
    snapshots = run_json(examples_venv, pipeline)["outputs"]["collect"]
    assert [s["sample"] for s in snapshots] == [1, 2]
    assert all(s["disks"][0]["path"] == "/" for s in snapshots)
    if sys.platform.startswith("linux"):
        assert all(s["memory"]["total"] > 0 for s in snapshots)


@pytest.mark.slow
def test_codegen_pipeline_runs(examples_venv: PluginVenv) -> None:
    shutil.copy(
        EXAMPLES / "headwater-codegen" / "tests" / "data" / "petstore.json", examples_venv.workdir
    )
    pipeline = write(
        examples_venv,
        "client.yaml",
        """\
        name: petstore-client
        sources:
          code: {action: codegen.client, params: {path: petstore.json, client_name: Petstore}}
        sinks:
          - {sink: stdout}
        """,
    )
    # ``headwater run FILE > client.py``: stdout is the module, the summary goes to stderr
    proc = examples_venv.run("-m", "headwater", "run", str(pipeline), "--no-progress")
    assert "succeeded" in proc.stderr
    namespace: dict[str, Any] = {"__name__": "petstore_client"}
    exec(compile(proc.stdout, "petstore_client.py", "exec"), namespace)
    assert namespace["Petstore"]().base_url == "http://petstore.example.com/v1"
    assert namespace["Pet"].__required_keys__ == {"id", "name"}


@pytest.mark.slow
def test_knowledge_pipeline_runs(examples_venv: PluginVenv) -> None:
    docs = examples_venv.workdir / "notes"
    docs.mkdir(exist_ok=True)
    (docs / "rivers.md").write_text("# Rivers\n\nThe source of a river is its headwater.\n")
    assert Path(examples_venv.python).with_name("headwater-knowledge").is_file()  # the command
    examples_venv.run("-m", "headwater_knowledge.cli", "index", "--db", "k.db", str(docs))
    pipeline = write(
        examples_venv,
        "ask.yaml",
        """\
        name: ask
        sources:
          search: {action: knowledge.search, params: {query: headwater, fts: {index: k.db}}}
        steps:
          - {transformer: knowledge.enrich}
          - {transformer: knowledge.rank}
          - {transformer: knowledge.synthesize}
        sinks:
          - {sink: collect}
        """,
    )
    events = run_json(examples_venv, pipeline)["outputs"]["collect"]
    assert events[0]["type"] == "query"
    assert events[-1]["type"] == "complete"
    assert [e["title"] for e in events if e["type"] == "result"] == ["Rivers"]
    assert "headwater" in "".join(e["delta"] for e in events if e["type"] == "answer")


@pytest.mark.slow
@pytest.mark.parametrize("distribution", sorted(EXPECTED))
def test_each_plugins_own_tests_pass_installed(
    examples_venv: PluginVenv, distribution: str
) -> None:
    """Each example's tests run against the installed package (not its source tree).

    The type check of codegen's output (mypy, several seconds) is left to the tox
    ``examples`` environment, which runs every test of the examples.
    """
    tests = examples_venv.workdir / distribution / "tests"
    shutil.copytree(EXAMPLES / distribution / "tests", tests, dirs_exist_ok=True)
    shutil.copy(EXAMPLES / distribution / "README.md", tests.parent)  # READMEs are tested too
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not mypy", str(tests)]
    proc = examples_venv.run(*args, check=False, cwd=tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout


def test_example_readmes_name_their_components() -> None:
    for distribution, (_plugin, expected) in EXPECTED.items():
        readme = (EXAMPLES / distribution / "README.md").read_text(encoding="utf-8")
        for ref in expected:
            assert f"`{ref.partition(':')[2]}`" in readme, (distribution, ref)
        pyproject = (EXAMPLES / distribution / "pyproject.toml").read_text(encoding="utf-8")
        assert "[project.entry-points.headwater]" in pyproject
    data = json.loads((EXAMPLES / "headwater-codegen/tests/data/petstore.json").read_text())
    assert data["openapi"].startswith("3.")
