"""The broker sources' batch JSON decoder, differentially against ``json.loads``: it gives
the same values or refuses the batch (the caller then decodes it one payload at a time
with ``json.loads``), and it does not refuse what producers commonly send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from headwater.builtin_plugins._broker_source import json_batch_decoder

decode = json_batch_decoder()

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
whitespace = st.text(alphabet=" \t\n\r", max_size=3)


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@given(st.lists(st.tuples(values, st.booleans(), whitespace), max_size=8))
def test_encoded_values_decode_as_json_loads_does(batch: list[tuple[Any, bool, str]]) -> None:
    payloads = [
        (json.dumps(v, ensure_ascii=ascii) + trailing).encode() for v, ascii, trailing in batch
    ]
    got = decode(payloads)  # never refused: values with trailing whitespace, any text
    assert same(got, [json.loads(p) for p in payloads])


@given(st.lists(st.binary(max_size=12) | st.text(max_size=12).map(str.encode), max_size=6))
def test_any_bytes_decode_as_json_loads_does_or_are_refused(payloads: list[bytes]) -> None:
    try:
        expected: Any = [json.loads(p) for p in payloads]
    except (ValueError, UnicodeDecodeError):
        expected = None
    try:
        got = decode(payloads)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return
    assert expected is not None, f"decoded what json.loads refuses: {payloads!r}"
    assert same(got, expected)
