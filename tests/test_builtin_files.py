"""Tests of the file streaming built-ins ``file.view``, ``file.find`` and ``dir.tree``.

``file.find`` is checked against the real ``grep -rn`` / ``grep -Rn`` on a generated
tree; ``file.view`` against the bytes of the file; ``dir.tree`` against ``os.walk``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater.builtin_plugins._textio import ByteLineSplitter
from headwater.builtin_plugins.files import view as files
from headwater.testing import builtin_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
GREP = shutil.which("grep")
needs_grep = pytest.mark.skipif(GREP is None, reason="needs grep")


@pytest.fixture(scope="module")
def plugins() -> headwater.PluginManager:
    """The built-ins, with ``headwater.files`` registered by hand until its entry point exists."""
    manager = builtin_plugin_manager()
    if "headwater.files" not in manager.plugins:
        assert manager.register(files, "headwater.files"), manager.failures
    return manager


def run(plugins: headwater.PluginManager, action: str, **params: Any) -> list[Any]:
    result = (
        headwater.Pipeline("t").source(action, **params).sink("collect").run_sync(plugins=plugins)
    )
    return list(result.output)


# -- a generated tree ---------------------------------------------------------------------

WORDS = ["alpha", "beta", "gamma", "ERROR", "error", "Error42", "warn", "x=1", "é", "naïve"]


def make_tree(root: Path, seed: int = 7) -> Path:
    """A deterministic tree: nested dirs, text, binary, hidden, empty and linked files."""
    rnd = random.Random(seed)
    root.mkdir()
    dirs = [root]
    for i in range(12):
        parent = rnd.choice(dirs)
        d = parent / (f".hidden{i}" if i == 5 else f"dir{i}")
        d.mkdir()
        dirs.append(d)
    for i in range(60):
        d = rnd.choice(dirs)
        ext = rnd.choice([".txt", ".log", ".py", ".md"])
        lines = []
        for _ in range(rnd.randint(0, 40)):
            lines.append(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(0, 8))))
        text = "\n".join(lines)
        if lines and rnd.random() < 0.8:
            text += "\n"  # some files lack the final newline
        (d / f"file{i}{ext}").write_text(text, encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "blob.bin").write_bytes(b"\x00\x01ERROR binary\n" * 10)
    (root / "dir1" if (root / "dir1").exists() else root).joinpath("img.dat").write_bytes(
        b"PNG\x00 ERROR\n"
    )
    # a symlink loop, a link to a directory elsewhere in the tree and a link to a file
    (dirs[-1] / "loop").symlink_to(root, target_is_directory=True)
    (root / "linkdir").symlink_to(dirs[1], target_is_directory=True)
    target = next(root.rglob("*.txt"))
    (root / "link.txt").symlink_to(target)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("find") / "tree")


def grep(*args: str, cwd: Path) -> Counter[tuple[str, int, str]]:
    """``grep ARGS`` in the C locale, parsed into a multiset of (file, line, text)."""
    assert GREP is not None
    proc = subprocess.run(
        [GREP, *args],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    found: Counter[tuple[str, int, str]] = Counter()
    for raw in proc.stdout.decode("utf-8").splitlines():
        file, line, text = raw.split(":", 2)
        found[(file, int(line), text)] += 1
    return found


def found(items: list[dict[str, Any]]) -> Counter[tuple[str, int, str]]:
    return Counter((i["file"], i["line"], i["text"]) for i in items)


@needs_grep
@pytest.mark.parametrize(
    ("grep_args", "params"),
    [
        (["-rn", "ERROR"], {"pattern": "ERROR"}),
        (["-rn", "-i", "error"], {"pattern": "error", "ignore_case": True}),
        (["-rnE", "Error[0-9]+|x=1"], {"pattern": "Error[0-9]+|x=1", "regex": True}),
        (["-rnE", "^beta"], {"pattern": "^beta", "regex": True}),
        (["-rn", "na\u00efve"], {"pattern": "na\u00efve"}),
        (["-Rn", "gamma"], {"pattern": "gamma", "follow_symlinks": True}),
        (
            ["-rn", "--include=*.py", "--include=*.md", "alpha"],
            {"pattern": "alpha", "include": ["*.py", "*.md"]},
        ),
        (
            ["-rn", "--exclude=*.log", "--exclude-dir=dir3", "beta"],
            {"pattern": "beta", "exclude": ["*.log", "dir3"]},
        ),
    ],
    ids=["literal", "ignore-case", "regex", "anchored", "utf-8", "follow", "include", "exclude"],
)
def test_find_equals_grep(
    plugins: headwater.PluginManager,
    tree: Path,
    grep_args: list[str],
    params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = grep(*grep_args, "tree", cwd=tree.parent)
    assert expected, "the generated tree should contain matches"
    monkeypatch.chdir(tree.parent)
    items = run(plugins, "file.find", path="tree", **params)
    tiny_blocks = run(plugins, "file.find", path="tree", block_size=7, **params)
    assert found(items) == expected
    assert found(tiny_blocks) == expected
    # streamed in a stable order: files in name order, lines ascending
    assert [(i["file"], i["line"]) for i in items] == [(i["file"], i["line"]) for i in tiny_blocks]


def test_find_columns_and_match(plugins: headwater.PluginManager, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("no\n  déjà ERROR here ERROR\nERROR\r\nend", encoding="utf-8")
    items = run(
        plugins, "file.find", path=str(tmp_path), pattern="err(or)", regex=True, ignore_case=True
    )
    assert [(i["line"], i["column"], i["match"], i["text"]) for i in items] == [
        (2, 8, "ERROR", "  déjà ERROR here ERROR"),
        (3, 1, "ERROR", "ERROR"),
    ]
    assert items[0]["file"] == str(tmp_path / "a.txt")


def test_find_single_file_long_lines_and_limits(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    path = tmp_path / "long.txt"
    path.write_text("x" * 100 + "NEEDLE" + "y" * 50 + "\nNEEDLE\n" * 5, encoding="utf-8")
    items = run(plugins, "file.find", path=str(path), pattern="NEEDLE", max_line_bytes=64)
    assert [(i["line"], i["column"]) for i in items][:2] == [(1, 101), (2, 1)]
    assert items[0]["file"] == str(path)
    capped = run(plugins, "file.find", path=str(path), pattern="NEEDLE", max_matches=2)
    assert len(capped) == 2


def test_find_reports_progress_and_status(plugins: headwater.PluginManager, tree: Path) -> None:
    events: list[Any] = []

    async def main() -> None:
        spec = headwater.Pipeline("p").source("file.find", path=str(tree), pattern="alpha")
        async with headwater.open_run(spec.sink("null"), plugins=plugins) as handle:
            async for event in handle.events():
                events.append(event)
            result = await handle.wait()
        assert result.state == "succeeded"

    anyio.run(main)
    progress = [e for e in events if isinstance(e, headwater.Progress)]
    assert progress
    # every regular file met: 60 text, the empty one and 2 binary ones; no links
    assert progress[-1].done == 63
    assert "matches" in (progress[-1].message or "")
    statuses = [e.message for e in events if isinstance(e, headwater.Status) and e.stage]
    assert any("binary skipped" in (m or "") for m in statuses)


def test_find_invalid_params_are_validation_errors(plugins: headwater.PluginManager) -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        run(plugins, "file.find", path=".", pattern="(unclosed", regex=True)
    assert "sources['file.find'].params" in str(info.value)
    assert "not a valid regular expression" in str(info.value)
    with pytest.raises(headwater.PipelineValidationError, match="ASCII-compatible"):
        run(plugins, "file.find", path=".", pattern="x", encoding="utf-16")


def test_find_missing_root_is_a_clear_error(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    result = (
        headwater.Pipeline("t")
        .source("file.find", path=str(tmp_path / "nope"), pattern="x")
        .sink("collect")
        .run_sync(plugins=plugins, raise_on_error=False)
    )
    assert result.state == "failed"
    assert "no such file or directory" in str(result.errors[0])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_find_stopped_early_closes_its_files(plugins: headwater.PluginManager, tree: Path) -> None:
    before = _open_fds()
    for _ in range(3):
        out = (
            headwater.Pipeline("t")
            .source("file.find", path=str(tree), pattern="a", block_size=16)
            .step("take", count=3)
            .sink("collect")
            .run_sync(plugins=plugins)
            .output
        )
        assert len(out) == 3
    assert _open_fds() <= before


# -- dir.tree -----------------------------------------------------------------------------


def walk_reference(root: Path, max_depth: int | None = None) -> list[tuple[str, str, int]]:
    """(path, type, depth) of every entry, symlinks not followed, from os.walk."""
    out = []
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base + 1
        if max_depth is not None and depth > max_depth:
            continue
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            kind = "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"
            out.append((str(path), kind, depth))
    return sorted(out)


def test_tree_matches_os_walk(plugins: headwater.PluginManager, tree: Path) -> None:
    items = run(plugins, "dir.tree", path=str(tree))
    assert sorted((i["path"], i["type"], i["depth"]) for i in items) == walk_reference(tree)
    # pre-order, name-sorted: every directory comes right before its content
    paths = [i["path"] for i in items]
    for i, item in enumerate(items):
        if item["type"] == "dir":
            inside = [p for p in paths if p.startswith(item["path"] + os.sep)]
            assert paths[i + 1 : i + 1 + len(inside)] == inside
    sizes = {i["path"]: i["size"] for i in items if i["type"] == "file"}
    assert sizes[str(tree / "blob.bin")] == 150
    links = {i["name"]: i["link"] for i in items if i["type"] == "symlink"}
    assert Path(links["linkdir"]).is_dir()
    assert links["link.txt"].endswith(".txt")


def test_tree_depth_limit_dirs_only_and_exclude(
    plugins: headwater.PluginManager, tree: Path
) -> None:
    shallow = run(plugins, "dir.tree", path=str(tree), max_depth=1)
    assert sorted((i["path"], i["type"], i["depth"]) for i in shallow) == walk_reference(tree, 1)
    dirs = run(plugins, "dir.tree", path=str(tree), dirs_only=True)
    assert dirs
    assert {i["type"] for i in dirs} == {"dir"}
    no_hidden = run(plugins, "dir.tree", path=str(tree), hidden=False, exclude=["*.log"])
    assert not any("/." in i["path"] or i["path"].endswith(".log") for i in no_hidden)


def test_tree_follows_symlinks_without_looping(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("x")
    (root / "a" / "b" / "up").symlink_to("../..", target_is_directory=True)  # loop to r
    (root / "a" / "self").symlink_to(".", target_is_directory=True)  # loop to a
    (root / "shortcut").symlink_to("a/b", target_is_directory=True)  # not a loop
    items = run(plugins, "dir.tree", path=str(root), follow_symlinks=True)
    by_path = {Path(i["path"]).relative_to(root).as_posix(): i for i in items}
    assert by_path["a/b/up"]["loop"] is True
    assert by_path["a/self"]["loop"] is True
    assert by_path["shortcut"]["type"] == "dir"
    assert "loop" not in by_path["shortcut"]
    assert "shortcut/f.txt" in by_path  # entered, and its own loop detected
    assert by_path["shortcut/up"]["loop"] is True
    assert len(items) == 8


def test_tree_of_a_file_is_an_error(plugins: headwater.PluginManager, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = (
        headwater.Pipeline("t")
        .source("dir.tree", path=str(tmp_path / "f"))
        .sink("collect")
        .run_sync(plugins=plugins, raise_on_error=False)
    )
    assert "is not a directory" in str(result.errors[0])


# -- file.view ----------------------------------------------------------------------------

TEXT = "first\nsecond line\r\n\nfourth é\nfifth"


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "v.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    return path


def test_view_numbers_lines_with_byte_offsets(
    plugins: headwater.PluginManager, text_file: Path
) -> None:
    items = run(plugins, "file.view", path=str(text_file))
    data = text_file.read_bytes()
    assert [(i["line"], i["text"]) for i in items] == [
        (1, "first"),
        (2, "second line"),
        (3, ""),
        (4, "fourth é"),
        (5, "fifth"),
    ]
    for item in items:  # each offset points at the start of its line
        raw = item["text"].encode("utf-8")
        assert data[item["offset"] : item["offset"] + len(raw)] == raw
    assert run(plugins, "file.view", path=str(text_file), block_size=1) == items


def test_view_byte_ranges_and_numbering(plugins: headwater.PluginManager, text_file: Path) -> None:
    data = text_file.read_bytes()
    start = data.index(b"fourth")
    absolute = run(plugins, "file.view", path=str(text_file), offset=start)
    assert [(i["line"], i["offset"], i["text"]) for i in absolute] == [
        (4, start, "fourth é"),
        (5, start + 10, "fifth"),
    ]
    relative = run(plugins, "file.view", path=str(text_file), offset=start, line_numbers="relative")
    assert [i["line"] for i in relative] == [1, 2]
    # a range cutting lines: pieces keep their line number
    middle = run(plugins, "file.view", path=str(text_file), offset=8, length=6)
    assert [(i["line"], i["offset"], i["text"]) for i in middle] == [(2, 8, "cond l")]
    tail = run(plugins, "file.view", path=str(text_file), offset=-5)
    assert [(i["line"], i["text"]) for i in tail] == [(5, "fifth")]
    past_end = run(plugins, "file.view", path=str(text_file), offset=10_000)
    assert past_end == []


@pytest.mark.parametrize(("offset", "length", "chunk"), [(0, None, 4), (3, 17, 5), (-9, None, 64)])
def test_view_chunks_reassemble_the_range(
    plugins: headwater.PluginManager,
    text_file: Path,
    offset: int,
    length: int | None,
    chunk: int,
) -> None:
    data = text_file.read_bytes()
    start = offset if offset >= 0 else len(data) + offset
    end = len(data) if length is None else start + length
    raw = run(
        plugins,
        "file.view",
        path=str(text_file),
        mode="chunks",
        offset=offset,
        length=length,
        chunk_size=chunk,
        encoding=None,
    )
    assert b"".join(i["data"] for i in raw) == data[start:end]
    assert [i["offset"] for i in raw] == list(range(start, end, chunk))
    assert all(i["size"] <= chunk for i in raw)
    text = run(
        plugins,
        "file.view",
        path=str(text_file),
        mode="chunks",
        offset=offset,
        length=length,
        chunk_size=chunk,
    )
    assert "".join(i["data"] for i in text) == data[start:end].decode("utf-8", "replace")


def test_view_long_lines_come_in_partial_pieces(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    path = tmp_path / "long.txt"
    path.write_text("é" * 10 + "\nshort\n", encoding="utf-8")  # 20 bytes of 2-byte chars
    items = run(plugins, "file.view", path=str(path), max_line_bytes=7, block_size=3)
    assert [i.get("partial", False) for i in items] == [True, True, False, False]
    assert {i["line"] for i in items[:3]} == {1}
    assert "".join(i["text"] for i in items[:3]) == "é" * 10
    assert items[3] == {"line": 2, "offset": 21, "text": "short"}


def test_view_progress_counts_bytes_of_the_range(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"0123456789\n" * 10_000)
    progress: list[headwater.Progress] = []

    async def main() -> None:
        spec = headwater.Pipeline("p").source(
            "file.view", path=str(path), offset=1000, length=50_000, block_size=4096
        )
        async with headwater.open_run(spec.sink("null"), plugins=plugins) as handle:
            async for event in handle.events():
                if isinstance(event, headwater.Progress):
                    progress.append(event)

    anyio.run(main)
    assert progress[-1].done == progress[-1].total == 50_000


def test_view_validation(plugins: headwater.PluginManager, text_file: Path) -> None:
    with pytest.raises(headwater.PipelineValidationError, match="needs an encoding"):
        run(plugins, "file.view", path=str(text_file), encoding=None)
    with pytest.raises(headwater.PipelineValidationError, match="ASCII-compatible"):
        run(plugins, "file.view", path=str(text_file), encoding="utf-16")
    result = (
        headwater.Pipeline("t")
        .source("file.view", path=str(text_file.parent / "missing.txt"))
        .sink("collect")
        .run_sync(plugins=plugins, raise_on_error=False)
    )
    assert "no such file" in str(result.errors[0])


@pytest.mark.anyio
async def test_view_checks_cancellation_and_closes(text_file: Path) -> None:
    from headwater.core.context import RunIdentity, StreamContext

    cancelled = False
    ctx = StreamContext(RunIdentity("t", "r"), "s", _cancelled=lambda: cancelled)
    params = files.FileViewParams(path=str(text_file), block_size=4)
    agen = files.file_view.obj(params, ctx)
    first = await agen.__anext__()
    assert first
    cancelled = True
    rest = [batch async for batch in agen]
    assert rest == []


def test_same_results_on_trio(plugins: headwater.PluginManager, tree: Path) -> None:
    pytest.importorskip("trio")
    for action, params in [
        ("file.find", {"path": str(tree), "pattern": "beta"}),
        ("dir.tree", {"path": str(tree)}),
        ("file.view", {"path": str(next(tree.rglob("*.txt"))), "block_size": 5}),
    ]:
        pipeline = headwater.Pipeline("t").source(action, **params).sink("collect")
        on_asyncio = pipeline.run_sync(plugins=plugins).output
        assert pipeline.run_sync(plugins=plugins, backend="trio").output == on_asyncio


# -- the line splitter under any block boundaries -----------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"\n", b"\r", "é".encode(), b"xyz"]), max_size=40),
    block=st.integers(1, 9),
    limit=st.integers(1, 12),
)
def test_splitter_reassembles_lines(data: list[bytes], block: int, limit: int) -> None:
    raw = b"".join(data)
    splitter = ByteLineSplitter(max_line_bytes=limit)
    pieces = []
    for i in range(0, len(raw), block):
        pieces += splitter.feed(raw[i : i + block])
    pieces += splitter.feed(b"", final=True)
    lines: dict[int, list[str]] = {}
    for line, _offset, text, _partial in pieces:
        lines.setdefault(line, []).append(text)
    parts = raw.decode("utf-8").split("\n")
    last = parts.pop()  # what follows the last line end
    expected = [p.removesuffix("\r") for p in parts] + ([last] if last else [])
    assert ["".join(texts) for _, texts in sorted(lines.items())] == expected
    assert list(lines) == list(range(1, len(expected) + 1))
    offsets = [p[1] for p in pieces]
    assert offsets == sorted(offsets)
    for line, offset, text, partial in pieces:
        if not partial and len(lines[line]) == 1:  # a whole line: its offset is exact
            assert raw[offset:].startswith(text.encode())


def test_benchmark_script_runs_small() -> None:
    """``python -m benchmarks.file_view_memory`` (tiny size here: the real run is 2 GB)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.file_view_memory", "--size-mb", "64", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["size_bytes"] == 64 * 1024 * 1024
    for mode in ("chunks", "lines"):
        assert report["modes"][mode]["bytes_seen"] == 64 * 1024 * 1024
        assert report["modes"][mode]["peak_rss_mb"] < 100
