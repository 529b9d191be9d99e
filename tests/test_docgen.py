"""The generated reference pages in docs/reference are up to date with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater import docgen

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docgen")
    assert docgen.main([str(out)]) == 0
    return out / "reference"


@pytest.mark.parametrize("page", docgen.REFERENCE_PAGES)
def test_committed_reference_is_current(generated: Path, page: str) -> None:
    committed = DOCS / "reference" / page
    assert committed.is_file(), (
        f"docs/reference/{page} is missing: run python -m headwater.docgen docs"
    )
    assert committed.read_text(encoding="utf-8") == (generated / page).read_text(
        encoding="utf-8"
    ), f"docs/reference/{page} is stale: run python -m headwater.docgen docs"


def test_output_is_deterministic_and_portable(generated: Path) -> None:
    again = {
        "hooks.md": docgen.hooks_reference(),
        "components.md": docgen.components_reference(docgen.builtin_plugin_manager()),
        "pipeline-yaml.md": docgen.pipeline_yaml_reference(),
    }
    for page, text in again.items():
        assert text == (generated / page).read_text(encoding="utf-8")
        assert str(Path.home()) not in text
        assert str(Path(__file__).resolve().parent.parent) not in text


def test_hooks_reference_covers_every_hook() -> None:
    text = docgen.hooks_reference()
    for hook in ("register_actions", "register_checkpoint_stores", "stream_error", "authorize"):
        assert f"## {hook}\n" in text
    assert "def authenticate(token: str | None, request: AuthRequest) -> Any" in text
    assert text.count("**firstresult**") == 2  # authenticate and authorize
    assert "``" not in text.replace("```", "")  # reST literals became Markdown


def test_components_reference_lists_builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_DISABLE_PLUGINS", "headwater.sources")
    text = docgen.components_reference(docgen.builtin_plugin_manager())
    assert "### range\n" in text  # the environment does not change the reference
    assert "| `stop` | integer | — | yes |" in text
    for plugin in {c.plugin for c in docgen.builtin_plugin_manager().registry}:
        assert plugin is not None
        assert plugin.startswith("headwater.")


def test_pipeline_yaml_reference_has_nested_keys() -> None:
    text = docgen.pipeline_yaml_reference()
    for section in ("PipelineSpec", "SourceSpec", "StepSpec", "SinkSpec", "RetryPolicy"):
        assert f"## {section}\n" in text
    assert "| `batch_size` | integer (> 0, ≤ 65536) | `256` | no |" in text
    assert "| `on_error` |" in text


def test_usage_errors() -> None:
    assert docgen.main([]) == 2
