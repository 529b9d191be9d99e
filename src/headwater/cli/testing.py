"""``headwater test``: run the test cases of pipeline files (see
:mod:`headwater.core.pipeline_tests`), with a readable report and exit codes for CI."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CLIError, _consoles, _engine, _secrets

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.engine import Engine
    from ..core.pipeline_tests import TestFile

TEST_EPILOG = """\
exit codes:
  0    every test case passed
  1    a test case failed (its differences are shown)
  2    a file or a test case is invalid (it names the problem), or there is no test case
"""


def _add_test_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``test`` sub-command."""
    test = commands.add_parser(
        "test",
        parents=[common],
        help="run the test cases of pipeline files (input items, expected outputs)",
        description="Run the test cases of pipeline files: those of their tests: key, and "
        "those of NAME.tests.yaml beside NAME.yaml. Each case feeds its input items in "
        "place of the sources (or to one step), collects what every sink would receive "
        "(no real destination is written), and compares it with its expect: items, "
        "counts, conditions (expressions). The last line reads 'N passed, N failed'.",
        epilog=TEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument(
        "files", metavar="FILE", nargs="+", help="pipeline files (or NAME.tests.yaml files)"
    )
    test.add_argument(
        "-k",
        dest="select",
        metavar="TEXT",
        help="only the cases whose name contains TEXT",
    )
    test.set_defaults(func=_cmd_test)


def _cmd_test(args: argparse.Namespace) -> int:
    """``headwater test``: run every case of every file; the report on stdout."""
    import anyio

    out, _ = _consoles()
    engine = _engine(args)
    counts = {"passed": 0, "failed": 0, "invalid": 0}
    seen: set[str] = set()
    for name in args.files:
        test_file = _load(name, args, out, counts)
        if test_file is None:
            continue
        key = str(test_file.pipeline.resolve())
        if key in seen:  # NAME.yaml and NAME.tests.yaml: the same cases
            continue
        seen.add(key)
        anyio.run(_run_cases, engine, test_file, args, out, counts)
    total = counts["passed"] + counts["failed"]
    if total == 0 and not counts["invalid"]:
        raise CLIError(f"no test case matches -k {args.select!r}")
    line = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["invalid"]:
        line += f", {counts['invalid']} invalid"
    style = "bold red" if counts["failed"] or counts["invalid"] else "bold green"
    from rich.text import Text

    out.print(Text(line, style=style))
    if counts["invalid"]:
        return EXIT_USAGE
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _show(out: Console, args: argparse.Namespace, text: str, style: str = "") -> None:
    from rich.text import Text

    out.print(Text(_secrets(args).mask(text), style=style), soft_wrap=True)


def _load(
    name: str, args: argparse.Namespace, out: Console, counts: dict[str, int]
) -> TestFile | None:
    """The file's cases, or None (counted invalid, and said) when it cannot be read."""
    from pathlib import Path

    from ..core.errors import HeadwaterError
    from ..core.pipeline_tests import load_test_file

    path = Path(name)
    if not path.is_file():
        _show(out, args, f"{name}: no such file", "red")
        counts["invalid"] += 1
        return None
    try:
        return load_test_file(path, _secrets(args))
    except HeadwaterError as exc:
        _show(out, args, f"{name}: invalid: {exc}", "red")
        counts["invalid"] += 1
        return None


async def _run_cases(
    engine: Engine,
    test_file: TestFile,
    args: argparse.Namespace,
    out: Console,
    counts: dict[str, int],
) -> None:
    from ..core.errors import HeadwaterError
    from ..core.pipeline_tests import run_case

    def show(text: str, style: str = "") -> None:
        _show(out, args, text, style)

    cases = [c for c in test_file.cases if not args.select or args.select in c.name]
    if not cases:
        return
    show(str(test_file.pipeline), "bold")
    for case in cases:
        try:
            outcome = await run_case(engine, test_file, case)
        except HeadwaterError as exc:
            show(f"  INVALID  {case.name}: {exc}", "red")
            counts["invalid"] += 1
            continue
        if outcome.passed:
            items = ", ".join(f"{k} {v:,}" for k, v in outcome.counts.items())
            show(f"  PASS  {case.name}" + (f" ({items})" if items else ""), "green")
            counts["passed"] += 1
            continue
        counts["failed"] += 1
        show(f"  FAIL  {case.name}", "bold red")
        for problem in outcome.problems:
            for i, text in enumerate(problem.splitlines()):
                style = ""
                if text.lstrip().startswith("+") and not text.lstrip().startswith("+++"):
                    style = "green"
                elif text.lstrip().startswith("-") and not text.lstrip().startswith("---"):
                    style = "red"
                show(("        - " if i == 0 else "          ") + text, style)
