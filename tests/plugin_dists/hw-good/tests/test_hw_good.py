"""How a plugin author tests a plugin with headwater's pytest fixtures (test data)."""

from __future__ import annotations

import hw_good

import headwater
from headwater.testing import RegisterPlugin, run_pipeline


def test_components_are_registered(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(hw_good)
    assert info.components == ["action:hw_good.count", "transformer:hw_good.square"]


def test_pipeline(register_plugin: RegisterPlugin) -> None:
    register_plugin(hw_good)
    pipeline = (
        headwater.Pipeline("squares")
        .source("hw_good.count", stop=4)
        .step("hw_good.square")
        .sink("collect")
    )
    assert run_pipeline(pipeline).output == [0, 1, 4, 9]


def test_square_directly() -> None:
    assert hw_good.square(3) == 9
