"""The public API per audience: moved names warn and still work, removed ones say why."""

from __future__ import annotations

import importlib

import pytest

import headwater
import headwater.scheduler
import headwater.server

MOVED = {
    "Server": "headwater.server",
    "ServerConfig": "headwater.server",
    "StreamingManager": "headwater.server",
    "StreamingConfig": "headwater.server",
    "StreamError": "headwater.server",
    "ClientTransport": "headwater.server",
    "Scheduler": "headwater.scheduler",
    "RunRequest": "headwater.scheduler",
    "RunRejected": "headwater.scheduler",
    "RunSkipped": "headwater.scheduler",
    "RunStateChanged": "headwater.scheduler",
    "ScheduledRun": "headwater.scheduler",
    "SchedulerError": "headwater.scheduler",
    "JobsFile": "headwater.scheduler",
    "JobsFileError": "headwater.scheduler",
    "run_jobs": "headwater.scheduler",
    "validate_jobs": "headwater.scheduler",
}


@pytest.mark.parametrize(("name", "home"), sorted(MOVED.items()))
def test_a_moved_name_warns_and_is_the_same_object(name: str, home: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"import it from {home}"):
        value = getattr(headwater, name)
    assert value is getattr(importlib.import_module(home), name)
    assert name not in headwater.__all__


def test_get_plugin_manager_is_deprecated_but_works() -> None:
    with pytest.warns(DeprecationWarning, match="engine.plugins"):
        get = headwater.get_plugin_manager
    assert isinstance(get(), headwater.PluginManager)


@pytest.mark.parametrize("name", ["hookspec", "current_server"])
def test_a_removed_top_level_name_says_what_to_use(name: str) -> None:
    with pytest.raises(AttributeError, match=r"was removed in 0\.2: "):
        getattr(headwater, name)


@pytest.mark.parametrize("name", ["current_server", "current_manager", "running_servers"])
def test_the_process_wide_server_registry_is_gone(name: str) -> None:
    with pytest.raises(AttributeError, match="publishes to the server of its engine"):
        getattr(headwater.server, name)


def test_every_public_name_resolves_without_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    for module in (headwater, headwater.server, headwater.scheduler):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_public_modules_are_attributes_after_a_bare_import() -> None:
    assert headwater.scheduler.Scheduler.__name__ == "Scheduler"
    assert headwater.server.Server.__name__ == "Server"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        headwater.nope  # noqa: B018
