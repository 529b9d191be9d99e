"""The user docs work as written: every Python code block runs, every pipeline YAML block
validates, and every shell block runs in a fresh folder (see :mod:`docs_shell` for the
markers a page uses to say how), on the docs pages and README.md."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml

import headwater
from docs_shell import SHELL_LANGUAGES, play_page, read_blocks
from headwater.core.api import prepare

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


PAGES = sorted(DOCS.glob("*.md"))
WITH_PYTHON = [p for p in [README, *PAGES] if blocks(p, "python")]
WITH_YAML = [p for p in [README, *PAGES] if blocks(p, "yaml")]
WITH_SHELL = [p for p in [README, *PAGES] if any(blocks(p, lang) for lang in SHELL_LANGUAGES)]

PLAYED_ELSEWHERE = {
    "tutorial-first-plugin.md": "test_tutorial.py plays it in a new virtual environment",
}
"""Pages whose shell (and Python) blocks another test runs, where they need more than a
folder."""

SERVER_PORT = 8765
"""The port of ``headwater serve`` without ``--port``, which some pages use."""


def test_tutorials_have_code() -> None:
    assert {"getting-started.md", "writing-plugins.md", "embedding.md"} <= {
        p.name for p in WITH_PYTHON
    }


@pytest.mark.parametrize("page", WITH_PYTHON, ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if page.name in PLAYED_ELSEWHERE:  # its blocks are files of a package, not snippets
        pytest.skip(PLAYED_ELSEWHERE[page.name])
    code = blocks(page, "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as exc:  # re-raised with the block for a readable failure
            raise AssertionError(f"{page.name}, python block {i} failed:\n{block}") from exc


@pytest.mark.parametrize("page", WITH_YAML, ids=lambda p: p.name)
def test_pipeline_yaml_blocks_validate(page: Path) -> None:
    pipelines = [yaml.safe_load(b) for b in blocks(page, "yaml")]
    pipelines = [p for p in pipelines if isinstance(p, dict) and "sources" in p]
    assert pipelines, f"{page.name} has YAML blocks but no pipeline"
    for data in pipelines:
        prepare(headwater.parse_pipeline(data))


def test_every_page_is_in_the_nav() -> None:
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page.name in nav, f"{page.name} is missing from mkdocs.yml nav"


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("page", WITH_SHELL, ids=lambda p: p.name)
def test_shell_blocks_run(page: Path, tmp_path: Path) -> None:
    if page.name in PLAYED_ELSEWHERE:
        pytest.skip(PLAYED_ELSEWHERE[page.name])
    text = page.read_text(encoding="utf-8")
    found, _ = read_blocks(text)
    long_running = any("until" in b.markers or "background" in b.markers for b in found)
    if long_running and port_in_use(SERVER_PORT):
        pytest.skip(f"port {SERVER_PORT}, which the page's server uses, is taken here")
    done = play_page(text, tmp_path)
    shell = [b for b in found if b.language in SHELL_LANGUAGES]
    assert len([line for line in done if "saved" not in line]) == len(shell), done


def test_markers_are_read() -> None:
    """The runner sees markers, saved files and commands as the docs mean them."""
    text = """<!-- shell-folder: examples -->
<!-- not-run: installs things -->
```bash
pip install x \\
    y   # comment
# a comment line
```

```yaml
# conf/serve.yaml
port: 0
```

<!-- until: ready -->

```console
$ headwater serve
output line
```
"""
    found, page = read_blocks(text)
    assert page == {"shell-folder": "examples"}
    assert [b.language for b in found] == ["bash", "yaml", "console"]
    assert found[0].markers == {"not-run": "installs things"}
    assert found[0].commands() == ["pip install x      y   # comment"]
    assert found[1].saved_as() == "conf/serve.yaml"
    assert found[1].markers == {}
    assert found[2].markers == {"until": "ready"}
    assert found[2].commands() == ["headwater serve"]


@pytest.mark.parametrize(
    ("page", "problem"),
    [
        ("```bash\nheadwater validate missing.yaml\n```\n", "exit status 2"),
        ("<!-- until: never printed -->\n```bash\nheadwater --version\n```\n", "ended"),
        ("<!-- not-run: broken -->\n```bash\nif then fi\n```\n", "not valid shell"),
    ],
)
def test_a_failing_block_fails_the_page(page: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=problem):
        play_page(page, tmp_path)
