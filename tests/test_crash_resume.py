"""Crash tests: a real ``headwater run`` process is killed with SIGKILL again and again,
resumed each time with ``--resume``, and the result must be what one uninterrupted run
gives: exactly once into the transactional SQLite sink (also through a stateful
``aggregate`` step), at least once with bounded duplicates into ``jsonl``.

The randomness is seeded; the seed is printed (and in every assertion message) so that a
failure can be replayed with ``HEADWATER_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import headwater

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

LINES = 200_000
KILLS = 20
EARLY_KILLS = 3
"""Of the kills, how many hit a process during its start-up, whatever its progress."""
EVERY_ITEMS = 5_000
BLOCK_SIZE = 16_384
"""Bytes per block of file.lines: positions (so markers) are reported once per block."""
RUN_TIMEOUT = 60.0
"""Upper bound for one process; only reached when something hangs."""


def line(i: int) -> str:
    return json.dumps({"n": i, "k": f"k{i % 7}"}, separators=(",", ":"))


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.jsonl"
    path.write_text("".join(line(i) + "\n" for i in range(LINES)), encoding="utf-8")
    return path


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("HEADWATER_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash test seed: {value} (replay with HEADWATER_CRASH_SEED={value})")
    return value


def pipeline_yaml(name: str, input_file: Path, step: str | None, sink: str) -> str:
    """A pipeline reading ``input_file`` (JSON lines), with an optional extra step."""
    source = {"path": str(input_file), "block_size": BLOCK_SIZE}
    lines = [
        f"name: {name}",
        "sources:",
        f"  lines: {{action: file.lines, params: {json.dumps(source)}}}",
        "steps:",
        "  - {transformer: json.decode}",
        *([f"  - {step}"] if step else []),
        "sinks:",
        f"  - {sink}",
        f"checkpoint: {{every_items: {EVERY_ITEMS}, params: {{path: ck.db}}}}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Crashes:
    """What the kill loop did: one line per attempt, for failure messages."""

    seed: int
    log: list[str] = field(default_factory=list)
    mid_run: int = 0
    """Kills that hit a run with some progress made and some left."""

    def __str__(self) -> str:
        return f"seed {self.seed}:\n  " + "\n  ".join(self.log)


def _spawn(cwd: Path, attempt: int) -> tuple[subprocess.Popen[bytes], Path]:
    err = cwd / f"stderr-{attempt}.txt"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headwater", "run", "p.yaml", "--resume", "--no-progress"],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
            | {"HEADWATER_ROOTS": os.environ["HEADWATER_ROOTS"]},  # the input is in another folder
        )
    return proc, err


def crash_and_resume(cwd: Path, progress: Callable[[], int], total: int, seed: int) -> Crashes:
    """Kill ``KILLS`` runs at points spread over the whole run, then finish it.

    Kill targets are stratified (one in each ``total / KILLS`` slice of the progress) so
    that kills land throughout the run; a few kills hit the start-up instead. After the
    target is reached the kill waits a random few milliseconds, to land between commits.
    """
    rng = random.Random(seed)
    crashes = Crashes(seed)
    early = set(rng.sample(range(KILLS), EARLY_KILLS))
    for attempt in range(KILLS):
        target = (attempt + rng.random()) * total / KILLS
        delay = rng.uniform(0.0, 0.4) if attempt in early else rng.uniform(0.0, 0.04)
        proc, err = _spawn(cwd, attempt)
        deadline = time.monotonic() + RUN_TIMEOUT
        seen = -1
        killed = False
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                seen = progress()
                if attempt in early or seen >= target:
                    time.sleep(delay)
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed = True
                    break
                time.sleep(0.002)
        finally:
            if proc.poll() is None and not killed:
                proc.kill()  # the deadline passed: fail below, but leave no process behind
            proc.wait(timeout=RUN_TIMEOUT)
        after = progress()
        what = "killed" if killed else f"exited {proc.returncode}"
        crashes.log.append(
            f"attempt {attempt}: target {target:,.0f}, {what} after {delay * 1000:.0f} ms "
            f"at progress {seen:,} (then {after:,})"
        )
        if not killed:
            assert proc.returncode == 0, f"{crashes}\n{err.read_text()}"
            break  # the run finished before the kill: nothing left to crash
        if 0 < after < total:
            crashes.mid_run += 1
    final, err = _spawn(cwd, KILLS)
    assert final.wait(timeout=RUN_TIMEOUT) == 0, f"{crashes}\n{err.read_text()}"
    crashes.log.append(f"final run: {err.read_text().strip().splitlines()[1:3]}")
    print(crashes)  # shown by pytest when the test fails
    return crashes


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read ``db`` without creating it (it may not exist yet, or be mid-write)."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def test_sqlite_sink_is_exactly_once_across_kill_9(
    tmp_path: Path, input_file: Path, seed: int
) -> None:
    db = tmp_path / "out.db"
    (tmp_path / "p.yaml").write_text(
        pipeline_yaml(
            "crash-sqlite",
            input_file,
            None,
            "{sink: sqlite, params: {path: out.db, table: t, columns: [n, k]}}",
        )
    )

    def committed_rows() -> int:
        found = _query(db, "SELECT max(rowid) FROM t")
        return int(found[0][0] or 0) if found else 0

    crashes = crash_and_resume(tmp_path, committed_rows, LINES, seed)
    assert crashes.mid_run >= KILLS // 2, crashes
    got = _query(db, "SELECT n, k FROM t ORDER BY rowid")
    assert len(got) == LINES, f"{len(got)} rows; {crashes}"
    assert [n for n, _ in got] == list(range(LINES)), crashes  # each once, in order
    assert all(k == f"k{n % 7}" for n, k in got), crashes


def test_stateful_aggregate_resumes_to_the_uninterrupted_result(
    tmp_path: Path, input_file: Path, seed: int
) -> None:
    db = tmp_path / "out.db"
    step = "{transformer: aggregate, params: {op: sum, field: n, by: k}}"
    sink = "{sink: sqlite, params: {path: out.db, table: sums}}"
    text = pipeline_yaml("crash-aggregate", input_file, step, sink)
    (tmp_path / "p.yaml").write_text(text)
    uninterrupted = {**yaml.safe_load(text), "sinks": [{"sink": "collect"}], "checkpoint": None}
    reference = headwater.parse_pipeline(uninterrupted)
    expected = headwater.run_sync(reference).output

    def checkpointed_items() -> int:
        found = _query(db, "SELECT data FROM headwater_sink_checkpoints")
        return int(json.loads(str(found[0][0]))["items"]) if found else 0

    crashes = crash_and_resume(tmp_path, checkpointed_items, LINES, seed)
    assert crashes.mid_run >= KILLS // 2, crashes
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute("SELECT * FROM sums")
        names = [d[0] for d in cursor.description]
        got = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
    assert got == expected, crashes  # one result row, equal to an uninterrupted run's
    assert expected == [{f"k{j}": sum(range(j, LINES, 7)) for j in range(7)}]


def test_jsonl_is_at_least_once_with_bounded_duplicates(
    tmp_path: Path, input_file: Path, seed: int
) -> None:
    out = tmp_path / "out.jsonl"
    (tmp_path / "p.yaml").write_text(
        pipeline_yaml("crash-jsonl", input_file, None, "{sink: jsonl, params: {path: out.jsonl}}")
    )
    store = tmp_path / "ck.db"

    def committed_items() -> int:
        # the file holds duplicates: the store's count is the progress that will stay
        found = _query(store, "SELECT data FROM headwater_checkpoints")
        return int(json.loads(str(found[0][0]))["items"]) if found else 0

    crashes = crash_and_resume(tmp_path, committed_items, LINES, seed)
    assert crashes.mid_run >= KILLS // 2, crashes
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n"), crashes
    numbers = []
    for i, raw in enumerate(text.splitlines()):
        try:
            numbers.append(json.loads(raw)["n"])  # every line is valid JSON: no torn line
        except ValueError:
            pytest.fail(f"line {i + 1} is not JSON: {raw!r}; {crashes}")
    # The file is the first run's lines, then each resume's, restarting from the last
    # checkpoint: never a gap, and each restart repeats at most one checkpoint interval
    # (every_items, rounded up to the source's next position report: one block of lines).
    bound = EVERY_ITEMS + BLOCK_SIZE // len(line(0))
    expected_next = 0  # one more than the highest line seen so far
    previous = -1
    repeats: list[int] = []  # at each restart: how many lines it goes back
    for n in numbers:
        assert n <= expected_next, f"line {expected_next} lost (next is {n}); {crashes}"
        if n != previous + 1:
            repeats.append(expected_next - n)
        previous = n
        expected_next = max(expected_next, n + 1)
    assert expected_next == LINES, crashes
    assert set(numbers) == set(range(LINES)), crashes
    assert all(r <= bound for r in repeats), f"restarts repeated {repeats} lines; {crashes}"
    print(f"{len(numbers) - LINES} duplicate lines in {len(repeats)} restarts: {repeats}")
