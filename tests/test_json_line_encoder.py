"""The jsonl and stdout sinks' JSON encoder, built once per sink, differentially against
``json.dumps`` with the same settings (hypothesis), and after a failure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.builtin_plugins.sinks import _JsonEncoder

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(values, max_size=8), st.booleans())
def test_it_writes_what_json_dumps_writes(items: list[Any], ascii: bool) -> None:
    expected = [json.dumps(v, ensure_ascii=ascii, separators=(",", ":")) for v in items]
    encoder = _JsonEncoder(ascii)
    assert encoder.encode_all(items) == expected
    assert encoder.encode_all(items) == expected  # and again: nothing left over


def test_a_circular_item_fails_and_the_next_items_still_encode() -> None:
    encoder = _JsonEncoder(ensure_ascii=True)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        encoder.encode_all([{"a": 1}, loop])
    shared = {"x": 1}
    assert encoder.encode_all([[shared, shared], "é"]) == ['[{"x":1},{"x":1}]', '"\\u00e9"']
