"""Jobs files: the model and its error paths, from_run data flow, run_jobs and its exit codes."""

from __future__ import annotations

import io
import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from rich.console import Console

import headwater
from headwater.cli.jobs import _run_jobs as run_jobs
from headwater.core.jobs import (
    JobsFileError,
    is_jobs_file,
    is_jobs_path,
    parse_jobs,
    validate_jobs,
)
from headwater.core.plugins import PluginManager
from headwater.core.scheduler import SchedulerError

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

started = None  # an anyio.Event set by the t.block action (created per test)


@headwater.action("t.block")
async def block(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield one item, then wait until cancelled."""
    if started is not None:
        started.set()
    yield 1
    await anyio.sleep_forever()


class BlockPlugin:
    """The throwaway plugin."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(block)


@pytest.fixture
def pm() -> PluginManager:
    manager = PluginManager().load()
    assert manager.register(BlockPlugin, "jobs-test-plugin"), manager.failures
    return manager


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def console() -> Console:
    return Console(file=io.StringIO(), width=120, highlight=False, emoji=False)


def output(c: Console) -> str:
    file = c.file
    assert isinstance(file, io.StringIO)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", file.getvalue())


def issues(exc: pytest.ExceptionInfo[JobsFileError]) -> list[str]:
    return [str(issue) for issue in exc.value.issues]


# -- the model ----------------------------------------------------------------------------


def test_is_jobs_file(tmp_path: Path) -> None:
    assert is_jobs_file({"jobs": {}})
    assert not is_jobs_file({"name": "p", "sources": {}})
    assert not is_jobs_file(["jobs"])
    jobs = write(tmp_path / "jobs.yaml", "jobs: {a: {pipeline: p.yaml}}\n")
    pipe = write(tmp_path / "p.yaml", "name: p\n")
    assert is_jobs_path(jobs)
    assert not is_jobs_path(pipe)
    assert not is_jobs_path(tmp_path / "missing.yaml")
    assert not is_jobs_path(write(tmp_path / "bad.yaml", "jobs: [\n"))


def test_shape_errors_name_their_path() -> None:
    data = {
        "concurrency": 0,
        "resoures": {"db": 1},
        "jobs": {
            "load": {
                "pipeline": 42,
                "depends_on": [7],
                "resources": {"db": -1},
                "prio": 3,
            },
            "extract": {"priority": 1},
        },
    }
    with pytest.raises(JobsFileError) as info:
        parse_jobs(data, source="jobs.yaml")
    assert sorted(issues(info)) == sorted(
        [
            "concurrency: Input should be greater than 0",
            "resoures: unknown key",
            "jobs.load.pipeline: a pipeline is a mapping (an inline pipeline) or the path of a "
            "pipeline YAML file, got int",
            "jobs.load.depends_on[0]: Input should be a valid string",
            "jobs.load.resources.db: Input should be greater than or equal to 0",
            "jobs.load.prio: unknown key",
            "jobs.extract.pipeline: required key is missing",
        ]
    )
    assert str(info.value).startswith("invalid jobs file jobs.yaml (7 problems):")
    assert isinstance(info.value, SchedulerError)
    assert isinstance(info.value, headwater.HeadwaterError)
    with pytest.raises(JobsFileError, match="jobs: Dictionary should have at least 1 item"):
        parse_jobs({"jobs": {}})
    with pytest.raises(JobsFileError, match="a jobs file is a mapping, got list"):
        parse_jobs([1, 2])


def test_graph_resource_and_pipeline_errors_are_all_reported(tmp_path: Path) -> None:
    write(tmp_path / "pipelines" / "broken.yaml", "name: broken\nsources: {}\nsinks: []\n")
    path = write(
        tmp_path / "jobs.yaml",
        """\
        resources: {db: 1}
        jobs:
          a:
            depends_on: [c]
            pipeline: {sources: {n: {action: range, params: {stop: 3}}}, sinks: [{sink: collect}]}
          b:
            depends_on: [a]
            pipeline: {sources: {n: {action: range, params: {stop: 3}}}, sinks: [{sink: collect}]}
          c:
            depends_on: [b]
            pipeline: {sources: {n: {action: range, params: {stop: 3}}}, sinks: [{sink: collect}]}
          load:
            depends_on: [nope]
            resources: {db: 2, gpu: 1}
            pipeline:
              sources: {rows: {from_run: a}, s: {action: no.such.thing}}
              compose: {merge: [rows, s]}
              sinks: [{sink: collect}]
          missing:
            pipeline: pipelines/missing.yaml
          broken:
            pipeline: pipelines/broken.yaml
        """,
    )
    with pytest.raises(JobsFileError) as info:
        validate_jobs(path)
    found = issues(info)
    assert (
        found[0]
        == "jobs.load.depends_on[0]: unknown run 'nope'; known runs: a, b, broken, c, missing"
    )
    assert found[1] == (
        "jobs.load.resources.db: needs 2 'db' but the scheduler has only 1: it could never start"
    )
    assert found[2] == "jobs.load.resources.gpu: unknown resource 'gpu' (the scheduler has: db)"
    assert found[3].startswith("jobs.load.pipeline.sources.rows.from_run: 'a' is not among")
    assert found[4].startswith("jobs.load.pipeline.sources.s.action: no action 'no.such.thing'")
    assert found[5].startswith("jobs.missing.pipeline: cannot read ")
    assert "pipelines/missing.yaml" in found[5].replace("\\", "/")
    assert "jobs.broken.pipeline.sources: Dictionary should have at least 1 item" in found[6]
    assert found[6].endswith("(in pipelines/broken.yaml)")
    assert found[7].startswith("jobs.broken.pipeline.sinks: ")
    assert len(found) == 8, found  # the cycle is looked for once every dependency is known
    assert str(info.value).startswith(f"invalid jobs file {path} (8 problems):")

    data = yaml.safe_load(path.read_text())
    data["jobs"]["load"].update(depends_on=["a"], resources={"db": 1})
    data["jobs"]["load"]["pipeline"]["sources"]["s"] = {"action": "range", "params": {"stop": 1}}
    del data["jobs"]["missing"], data["jobs"]["broken"]
    write(path, yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(JobsFileError) as info:
        validate_jobs(path)
    assert issues(info) == [
        "jobs.a.depends_on[0]: dependency cycle: a -> c -> b -> a (each run depends on the next)"
    ]

    data["jobs"]["a"]["depends_on"] = []
    write(path, yaml.safe_dump(data, sort_keys=False))
    assert set(validate_jobs(path).jobs) == {"a", "b", "c", "load"}


# -- running ------------------------------------------------------------------------------


async def test_from_run_data_flow_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "squares.jsonl"
    write(
        tmp_path / "pipelines" / "squares.yaml",
        f"""\
        name: squares
        sources:
          up: {{from_run: numbers}}
        steps:
          - {{transformer: map, params: {{fn: "operator:neg"}}}}
        sinks:
          - {{sink: jsonl, params: {{path: {json.dumps(str(out))}}}}}
        """,
    )
    path = write(
        tmp_path / "jobs.yaml",
        """\
        concurrency: 2
        jobs:
          numbers:
            pipeline:
              sources: {n: {action: range, params: {stop: 5}}}
              sinks: [{sink: collect}]
          squares:
            depends_on: [numbers]
            pipeline: pipelines/squares.yaml
        """,
    )
    out.parent.mkdir()
    monkeypatch.chdir(tmp_path.parent)  # pipeline paths are relative to the jobs file
    c = console()
    assert await run_jobs(path, progress=False, console=c) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [0, -1, -2, -3, -4]
    text = output(c)
    assert "numbers: succeeded" in text
    assert "squares: succeeded" in text
    assert "all 2 jobs succeeded" in text


async def test_exit_code_is_1_when_a_job_fails(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.yaml",
        """\
        jobs:
          negative:
            pipeline:
              sources: {n: {action: range, params: {start: -3, stop: 0}}}
              steps: [{transformer: map, params: {fn: "math:sqrt"}}]
              sinks: [{sink: collect}]
          after:
            depends_on: [negative]
            pipeline:
              sources: {up: {from_run: negative}}
              sinks: [{sink: collect}]
          fine:
            pipeline:
              sources: {n: {action: range, params: {stop: 3}}}
              sinks: [{sink: collect}]
        """,
    )
    c = console()
    assert await run_jobs(path, progress=False, console=c) == 1
    text = output(c)
    assert "negative: failed" in text
    assert "math domain error" in text
    assert "after: skipped (dependency 'negative' failed)" in text
    assert "fine: succeeded" in text
    assert "1 of 3 jobs succeeded; 1 failed, 1 skipped" in text


async def test_invalid_file_raises_before_anything_runs(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.yaml", "jobs: {a: {pipeline: {sources: {}}, priority: x}}\n")
    with pytest.raises(JobsFileError) as info:
        await run_jobs(path, progress=False, console=console())
    assert "jobs.a.priority: Input should be a valid integer" in issues(info)[0]
    with pytest.raises(JobsFileError, match="cannot read"):
        await run_jobs(tmp_path / "nope.yaml", progress=False, console=console())


async def test_live_view_and_summary(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.yaml",
        """\
        resources: {db: 1}
        jobs:
          count:
            priority: 3
            resources: {db: 1}
            pipeline:
              sources: {n: {action: range, params: {stop: 100000, chunk: 1000}}}
              sinks: [{sink: "null"}]
          words:
            pipeline:
              sources: {w: {action: iterable, params: {items: [a, b]}}}
              sinks: [{sink: collect}]
        """,
    )
    c = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    assert await run_jobs(path, progress=True, console=c) == 0
    text = output(c)
    assert "job" in text
    assert "state" in text
    assert "progress" in text
    assert re.search(r"count\s+3\s+succeeded\s+100,000 items", text)
    assert "all 2 jobs succeeded" in text


async def test_stop_event_cancels_every_job(tmp_path: Path, pm: PluginManager) -> None:
    global started
    started = anyio.Event()
    path = write(
        tmp_path / "jobs.yaml",
        """\
        concurrency: 1
        jobs:
          forever:
            pipeline: {sources: {b: {action: t.block}}, sinks: [{sink: collect}]}
          next:
            pipeline: {sources: {b: {action: t.block}}, sinks: [{sink: collect}]}
          after:
            depends_on: [forever]
            pipeline: {sources: {b: {action: t.block}}, sinks: [{sink: collect}]}
        """,
    )
    stop = anyio.Event()
    codes: list[int] = []
    c = console()

    async def go() -> None:
        codes.append(await run_jobs(path, progress=False, console=c, plugins=pm, stop=stop))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await started.wait()
            stop.set()
    assert codes == [1]
    text = output(c)
    assert "forever: cancelled (interrupted)" in text
    assert "next: cancelled (interrupted)" in text
    assert "after: cancelled (interrupted)" in text


async def test_run_jobs_is_cancellable(tmp_path: Path, pm: PluginManager) -> None:
    global started
    started = anyio.Event()
    path = write(
        tmp_path / "jobs.yaml",
        """\
        jobs:
          forever:
            pipeline: {sources: {b: {action: t.block}}, sinks: [{sink: collect}]}
        """,
    )
    c = console()

    async def go() -> None:
        await run_jobs(path, progress=False, console=c, plugins=pm)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await started.wait()
            tg.cancel_scope.cancel()
    assert "all 1 jobs succeeded" not in output(c)


# -- shipped files ------------------------------------------------------------------------


def test_example_jobs_file_is_valid() -> None:
    jobs = validate_jobs(ROOT / "examples" / "jobs.yaml")
    assert {"numbers", "roots", "letters", "report"} <= set(jobs.jobs)


async def test_example_jobs_file_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert await run_jobs("examples/jobs.yaml", progress=False, console=console()) == 0


def test_jobs_blocks_in_the_docs_are_valid(tmp_path: Path) -> None:
    page = ROOT / "docs" / "scheduling.md"
    fence = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
    blocks = [yaml.safe_load(b) for b in fence.findall(page.read_text(encoding="utf-8"))]
    jobs_blocks = [b for b in blocks if is_jobs_file(b)]
    assert jobs_blocks, "docs/scheduling.md shows no jobs file"
    for i, block in enumerate(jobs_blocks):
        files = {
            job["pipeline"]
            for job in block["jobs"].values()
            if isinstance(job.get("pipeline"), str)
        }
        for name in files:  # pipeline files a block refers to: the page's pipeline block
            pipeline = next(b for b in blocks if isinstance(b, dict) and "sources" in b)
            write(tmp_path / name, yaml.safe_dump(pipeline))
        validate_jobs(write(tmp_path / f"jobs{i}.yaml", yaml.safe_dump(block)))
