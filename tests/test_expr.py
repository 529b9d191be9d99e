"""Expressions (``headwater.Expression``): what they accept, what they refuse, and that
they compute what Python computes for the same text.

The differential test generates expressions from the grammar of allowed constructs and
random items, and compares the compiled expression with Python's own ``eval`` of the same
text in a namespace holding only the item's keys and the allowed functions.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import headwater
from headwater import Expr, ExprError, Expression, ExprLimitError, MissingField
from headwater.core.expr import MAX_DEPTH, MAX_INT_BITS, MAX_LENGTH, MAX_NODES, MAX_REPEAT

# ---------------------------------------------------------------------------------------
# what expressions compute
# ---------------------------------------------------------------------------------------

RECORD = {"level": "ERROR", "latency": 0.7, "user": {"id": 7, "tags": ["a", "b"]}, "n": 12}


@pytest.mark.parametrize(
    ("text", "item", "expected"),
    [
        ("item % 3 == 0", 9, True),
        ("item % 3 == 0", 10, False),
        ("level == 'ERROR' and latency > 0.5", RECORD, True),
        ("level == 'ERROR' and latency > 0.9", RECORD, False),
        ("latency * 1000", RECORD, 700.0),
        ("user['id'] + n", RECORD, 19),
        ("user['tags'][-1]", RECORD, "b"),
        ("item['level'].lower()", RECORD, "error"),
        ("level.lower().startswith('err')", RECORD, True),
        ("'  x '.strip() + level[:1]", RECORD, "xE"),
        ("len(user['tags']) in [1, 2]", RECORD, True),
        ("level not in ('INFO', 'DEBUG')", RECORD, True),
        ("get(item, 'missing', 'none') + get(user, 'id', 0) * ''", RECORD, "none"),
        ("get(get(item, 'user'), 'tags')", RECORD, ["a", "b"]),
        ("get(get(item, 'nobody'), 'tags', 0)", RECORD, 0),
        ("'slow' if latency > 0.5 else 'fast'", RECORD, "slow"),
        ("round(latency * 3, 2)", RECORD, 2.1),
        ("max(n, 20) - min(n, 20) + abs(-1)", RECORD, 9),
        ("int('ff', 16) + int(2.9) + float('1.5')", {}, 258.5),
        ("str(n) + str(None)", RECORD, "12None"),
        ("bool(item) and not bool('')", RECORD, True),
        ("user['id'] is not None", RECORD, True),
        ("{'a': n, 'b': [n, n]}", RECORD, {"a": 12, "b": [12, 12]}),
        ("item", 5, 5),
        ("2 ** 10 + 1 << 3 >> 1 | 1 & 3 ^ 4", {}, eval("2 ** 10 + 1 << 3 >> 1 | 1 & 3 ^ 4")),
        ("'ab' * 3 + 'c' * n", {"n": 2}, "abababcc"),
        ("3 * [0]", {}, [0, 0, 0]),
        ("n ** 2 + n ** 0.5", {"n": 16}, 260.0),
        ("n % 3 + n % 2.5", {"n": 7.5}, 1.5),
        ("type == 'x' and id == 1", {"type": "x", "id": 1}, True),
        ("len == 3", {"len": 3}, True),
        ("(level ==\n 'ERROR')", RECORD, True),
        ("  level == 'ERROR'  ", RECORD, True),
    ],
)
def test_values(text: str, item: Any, expected: Any) -> None:
    assert Expression(text)(item) == expected


def test_names_are_the_item_fields_read_by_name_in_order() -> None:
    assert Expression("b + a * b + item['c'] + len(d)").names == ("b", "a", "d")
    assert Expression("item + 1").names == ()


def test_an_expression_is_its_text() -> None:
    one = Expression("a == 1")
    assert one == Expression("a == 1")
    assert one != Expression("a == 2")
    assert hash(one) == hash(Expression("a == 1"))
    assert repr(one) == "Expression('a == 1')"
    assert one.fn({"a": 1}) is True
    again = pickle.loads(pickle.dumps(one))
    assert again == one
    assert again({"a": 1}) is True


# ---------------------------------------------------------------------------------------
# run-time errors
# ---------------------------------------------------------------------------------------


def test_a_missing_field_is_a_missing_field_error() -> None:
    with pytest.raises(MissingField, match="item has no field 'level'") as info:
        Expression("latency > 0 and level == 'x'")({"latency": 1})
    assert isinstance(info.value, KeyError)
    assert info.value.path == "level"


def test_a_missing_nested_key_names_where_it_was_looked_up() -> None:
    with pytest.raises(MissingField, match=r"user\['tags'\] has no key 'x'"):
        Expression("user['tags']['x']")({"user": {"tags": {}}})
    with pytest.raises(MissingField, match="item has no field 'user'"):
        Expression("item['user']")({})


def test_short_circuit_guards_a_missing_field() -> None:
    cond = Expression("'level' in item and level == 'ERROR'")
    assert cond({}) is False
    assert cond({"level": "ERROR"}) is True


def test_a_name_on_an_item_that_is_no_mapping_says_so() -> None:
    with pytest.raises(TypeError, match="cannot read field 'level' of a int item"):
        Expression("level == 1")(5)


def test_a_str_method_on_another_type_says_so() -> None:
    with pytest.raises(TypeError, match=r"lower\(\) is a str method; the value is of type int"):
        Expression("n.lower()")({"n": 3})


def test_other_errors_are_python_errors() -> None:
    with pytest.raises(ZeroDivisionError):
        Expression("n / 0")({"n": 1})
    with pytest.raises(TypeError, match="'>' not supported"):
        Expression("s > 1")({"s": "a"})
    with pytest.raises(IndexError):
        Expression("xs[5]")({"xs": []})


# ---------------------------------------------------------------------------------------
# refused at validation, with line and column
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item % 3 == foo(1)", "line 1, column 13: name 'foo' is not allowed"),
        ("level ==", "line 1, column 9: the expression ends too early"),
        ("a && b", "line 1, column 3: invalid syntax: write 'and' instead of '&&'"),
        ("a || b", "write 'or' instead of '||'"),
        ("a = 1", "line 1, column 3: invalid syntax: write '==' to compare"),
        ("(a ==\n  foo(1))", "line 2, column 3: name 'foo' is not allowed"),
        ("  \n  foo(", "line 2, column 6: '(' was never closed"),
        ("'é' + foo(1)", "line 1, column 7: name 'foo' is not allowed"),
        ("a is 1", "line 1, column 1: 'is' is only allowed with None"),
        ("len()", "len() takes 1 argument (0 given)"),
        ("get(item)", "get() takes 2 to 3 arguments (1 given)"),
        ("s.lower(1)", "lower() takes 0 arguments (1 given)"),
        ("round(x, ndigits=2)", "column 10: keyword arguments are not allowed"),
        ("min(*xs)", "unpacking (*) is not allowed"),
        ("{**item}", "unpacking (**) is not allowed"),
        ("true", "name 'true' is not allowed: write True"),
        ("null", "write None"),
        ("a @ b", "the operator @ is not allowed"),
        ("[x for x in xs]", "a list comprehension is not allowed"),
        ("any(x for x in xs)", "name 'any' is not allowed"),
        ("{x: 1 for x in xs}", "a dict comprehension is not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("f'{a}'", "an f-string is not allowed"),
        ("(y := 1)", "assignment (:=) is not allowed"),
        ("item.get('a')", "attribute 'get' is not allowed: write get(value, key)"),
        ("s.format(1)", "attribute 'format' is not allowed"),
        ("s.upper", "attribute 'upper' is not allowed"),
        ("1j", "the constant 1j is not allowed"),
        ("...", "the constant Ellipsis is not allowed"),
        ("xs[0](1)", "only the listed functions and str methods can be called"),
    ],
)
def test_refused_with_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ExprError) as info:
        Expression(text)
    assert message in str(info.value)


def test_an_expression_error_carries_its_parts() -> None:
    with pytest.raises(ExprError) as info:
        Expression("a + bad(1)")
    assert (info.value.line, info.value.column) == (1, 5)
    assert info.value.reason.startswith("name 'bad' is not allowed")
    assert isinstance(info.value, ValueError)


def test_only_text_is_an_expression() -> None:
    with pytest.raises(ExprError, match="must be a string, not int"):
        Expression(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# security: escapes are refused, explosions are bounded
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("().__class__", "line 1, column 4: attribute '__class__' is not allowed"),
        ("item.__class__", "attribute '__class__' is not allowed"),
        ("''.__class__.__mro__[1].__subclasses__()", "attribute '__subclasses__' is not allowed"),
        ("s.lower.__self__", "attribute '__self__' is not allowed"),
        ("open('/etc/passwd')", "name 'open' is not allowed"),
        ("__import__('os')", "name '__import__' is not allowed"),
        ("__import__('os').system('true')", "column 18: attribute 'system' is not allowed"),
        ("__builtins__", "name '__builtins__' is not allowed"),
        ("getattr(item, '__class__')", "name 'getattr' is not allowed"),
        ("eval('1')", "name 'eval' is not allowed"),
        ("type(item)", "name 'type' is not allowed"),
        ("_hw_field(item, 'x')", "name '_hw_field' is not allowed"),
        ("10 ** 10 ** 10", "10 ** 10000000000 would have about"),
        ("2 ** 100000", "the limit is 10,000"),
        ("1 << 10 ** 6", "1 << 1000000 would have"),
        ("'a' * 10 ** 9", "exceeds 1,000,000 elements"),
        ("[0] * 10 ** 7", "exceeds 1,000,000 elements"),
        ("10 ** 9 * 'ab'", "exceeds 1,000,000 elements"),
        ("('a' * 1000) * 10 ** 4", "exceeds 1,000,000 elements"),
        ("'%s' % 1", "string formatting, which is not allowed"),
        ("b'%d' % n", "line 1, column 1: '%' on a bytes is string formatting"),
        ("x" * (MAX_LENGTH + 1), f"at most {MAX_LENGTH:,}"),
        ("-" * 60 + "1", f"nests too deeply (at most {MAX_DEPTH})"),
        ("(" * 300 + "1" + ")" * 300, "nests too deeply"),
        ("[" * 100 + "]" * 100, "nests too deeply"),
        ("1" + " + 1" * 60, "nests too deeply"),
        ("[" + ", ".join(["1"] * (MAX_NODES + 1)) + "]", f"too many parts (at most {MAX_NODES})"),
        ("a\x00", "NUL character"),
    ],
)
def test_escapes_and_bombs_are_refused_at_validation(text: str, message: str) -> None:
    with pytest.raises(ExprError) as info:
        Expression(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "item", "message"),
    [
        ("s * n", {"s": "a", "n": 10**9}, "exceeds 1,000,000 elements"),
        ("n * s", {"s": "ab", "n": 10**9}, "exceeds 1,000,000 elements"),
        ("s * 1000", {"s": "a" * 10_000}, "exceeds 1,000,000 elements"),
        ("1000 * xs", {"xs": [0] * 10_000}, "exceeds 1,000,000 elements"),
        ("(s * 1000) * 1000", {"s": "ab"}, "exceeds 1,000,000 elements"),
        ("n ** m", {"n": 10, "m": 10**9}, f"the limit is {MAX_INT_BITS:,}"),
        ("n ** 10 ** 6", {"n": 3}, "would have about"),
        ("((n ** 64) ** 64) ** 64", {"n": 10**100}, "would have about"),
        ("n << m", {"n": 1, "m": 10**9}, "would have 1,000,000,001 bits"),
        ("round(n, m)", {"n": 5, "m": -(10**9)}, "ndigits must be between"),
        ("s % 1", {"s": "%1000000000d"}, "string formatting"),
        ("s % n", {"s": b"%1000000000d", "n": 1}, "'%' on a bytes is string formatting"),
    ],
)
def test_explosions_on_item_values_are_bounded_at_run_time(
    text: str, item: dict[str, Any], message: str
) -> None:
    expression = Expression(text)
    with pytest.raises(ExprLimitError) as info:
        expression(item)
    assert message in str(info.value)


def test_the_bounds_admit_what_they_should() -> None:
    assert len(Expression("s * n")({"s": "ab", "n": MAX_REPEAT // 2})) == MAX_REPEAT
    assert Expression("n ** 3")({"n": 1000}) == 10**9
    assert Expression("2 ** 9999")({}) == 2**9999
    assert Expression("n ** m")({"n": 1, "m": 10**9}) == 1
    assert Expression("n ** m")({"n": 2.0, "m": -2}) == 0.25
    assert Expression("n << 64")({"n": 1}) == 2**64
    assert Expression("n % m")({"n": 7, "m": 4}) == 3
    assert Expression("round(n, -2)")({"n": 1234}) == 1200


def test_no_name_reaches_anything_but_the_item() -> None:
    # Bare names are fields, so the names of builtins only ever read the item.
    assert Expression("open")({"open": 1}) == 1
    with pytest.raises(MissingField, match="'print'"):
        Expression("print")({})


# ---------------------------------------------------------------------------------------
# the differential test against Python's eval
# ---------------------------------------------------------------------------------------

NAMES = ["a", "b", "f", "s", "t", "xs"]
"""Item keys the generated expressions read; none is a function name or ``item``."""


def _reference_get(container: Any, key: Any, default: Any = None) -> Any:
    if container is None:
        return default
    try:
        return container[key]
    except (KeyError, IndexError):
        return default


REFERENCE_FUNCTIONS: dict[str, Any] = {
    "__builtins__": {},
    "abs": abs,
    "bool": bool,
    "float": float,
    "get": _reference_get,
    "int": int,
    "len": len,
    "max": max,
    "min": min,
    "round": round,
    "str": str,
}

_atoms = st.one_of(
    st.integers(-20, 20).map(str),
    st.sampled_from(["0.5", "-1.25", "2.0", "1e3", "0"]),
    st.sampled_from(["'x'", "'ab'", "''", "'A b'", "'%'"]),
    st.sampled_from(["True", "False", "None"]),
    st.sampled_from([*NAMES, "item"]),
)


_BINOPS = ["+", "-", "*", "/", "//", "%", "&", "|", "^", ">>", "and", "or"]
_COMPARES = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]
FORMS = [
    *(f"({{0}} {op} {{1}})" for op in _BINOPS + _COMPARES),
    *(f"({op}{{0}})" for op in ("not ", "-", "+", "~")),
    "({0} ** {p})",
    "({0} << {p})",
    "({0} is None)",
    "({0} is not None)",
    "({0} if {1} else {2})",
    *(f"{fn}({{0}})" for fn in ("len", "str", "int", "float", "bool", "abs", "round")),
    "min({0}, {1})",
    "max({0}, {1}, {2})",
    "round({0}, {k})",
    "({0}).lower()",
    "({0}).upper()",
    "({0}).strip()",
    "({0}).rstrip('b')",
    "({0}).startswith({1})",
    "({0}).endswith({1})",
    "({0})[{k}]",
    "({0})[{k}:{1}]",
    "[{0}, {1}]",
    "({0}, {1})",
    "{{{0}: {1}}}",
    "get(item, {0}, {1})",
    "get({0}, {k}, {1})",
    *(f"item[{name!r}]" for name in ("a", "b", "f", "s", "t", "xs")),
]
"""Every construct of the grammar: {0} {1} {2} are sub-expressions, {k} a small integer,
{p} a small natural number."""


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # One reference to ``children`` per level keeps the strategy's repr linear in depth.
    return st.tuples(
        st.sampled_from(FORMS), st.lists(children, min_size=3, max_size=3), st.integers(-3, 3)
    ).map(lambda t: t[0].format(*t[1], k=t[2], p=abs(t[2])))


expressions = st.recursive(_atoms, _extend, max_leaves=10)
items = st.fixed_dictionaries(
    {},
    optional={
        "a": st.integers(-50, 50),
        "b": st.integers(-5, 5),
        "f": st.floats(allow_nan=True, allow_infinity=True),
        "s": st.text(alphabet="aAb %", max_size=5),
        "t": st.sampled_from(["", "x", "ab", "A b"]),
        "xs": st.lists(st.integers(-5, 5), max_size=4),
    },
)

GUARDED = ("*", "%", "<<")
"""Operators whose guard may refuse what Python computes (string formatting, big results)."""


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except Exception as exc:
        return "error", exc


def _same_value(mine: Any, theirs: Any) -> bool:
    if isinstance(mine, float) and isinstance(theirs, float) and math.isnan(mine):
        return math.isnan(theirs)
    return type(mine) is type(theirs) and repr(mine) == repr(theirs)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # Python's eval of '1 is None', '5[0]'
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expressions, item=items)
def test_expressions_compute_what_python_computes(text: str, item: dict[str, Any]) -> None:
    compiled = _outcome(Expression, text)
    if compiled[0] == "error":  # the grammar makes only allowed constructs: a guard refused
        refusal = str(compiled[1])
        assert isinstance(compiled[1], ExprError), f"{text!r}: {refusal}"
        assert any(op in text for op in GUARDED), f"{text!r}: {refusal}"
        guards = ("string formatting", "limit", "exceeds")
        assert any(word in refusal for word in guards), f"{text!r}: {refusal}"
        return
    expression = compiled[1]
    namespace = {**item, "item": item}
    kind, mine = _outcome(expression, item)
    ref_kind, theirs = _outcome(lambda: eval(text, dict(REFERENCE_FUNCTIONS), namespace))
    if kind == "value":
        assert ref_kind == "value", f"{text!r} on {item!r}: Python raised {theirs!r}"
        assert _same_value(mine, theirs), f"{text!r} on {item!r}: {mine!r} != {theirs!r}"
        return
    if isinstance(mine, ExprLimitError):
        assert any(op in text for op in GUARDED), f"{text!r} on {item!r}: {mine}"
        return
    assert ref_kind == "error", f"{text!r} on {item!r}: {mine!r}, Python gave {theirs!r}"
    if isinstance(mine, MissingField):
        assert isinstance(theirs, NameError | KeyError), f"{text!r} on {item!r}: {theirs!r}"
    elif isinstance(theirs, AttributeError):  # a str method of another type
        assert isinstance(mine, TypeError), f"{text!r} on {item!r}: {mine!r}"
    else:
        assert type(mine) is type(theirs), f"{text!r} on {item!r}: {mine!r} vs {theirs!r}"


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=200, deadline=None)
@given(text=expressions, item=st.one_of(st.integers(-100, 100), st.text(max_size=4)))
def test_non_mapping_items_fail_cleanly_or_compute_the_same(text: str, item: Any) -> None:
    """On an item that is not a mapping, names fail with a TypeError; ``item`` still works."""
    try:
        expression = Expression(text)
    except ExprError:
        assume(False)  # refused by a guard: the other test checks why
    kind, mine = _outcome(expression, item)
    if kind == "value" and not expression.names:
        assert _same_value(mine, eval(text, dict(REFERENCE_FUNCTIONS), {"item": item}))
    elif kind == "error":
        assert isinstance(mine, Exception)
        assert not isinstance(mine, ExprError)


# ---------------------------------------------------------------------------------------
# the pydantic type
# ---------------------------------------------------------------------------------------


class WhereParams(BaseModel):
    where: Expr
    project: dict[str, Expr] = {}


def test_expr_compiles_at_validation_and_serialises_as_text() -> None:
    params = WhereParams.model_validate({"where": "n > 1", "project": {"double": "n * 2"}})
    assert isinstance(params.where, Expression)
    assert params.where({"n": 2}) is True
    assert params.project["double"]({"n": 2}) == 4
    assert params.model_dump() == {"where": "n > 1", "project": {"double": "n * 2"}}
    assert WhereParams.model_validate(params.model_dump()) == params
    again = WhereParams(where=params.where)
    assert again.where is params.where


def test_expr_errors_are_validation_errors_at_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        WhereParams.model_validate({"where": "n >", "project": {"x": "open(1)"}})
    errors = {tuple(e["loc"]): e["msg"] for e in info.value.errors()}
    assert errors[("where",)] == "Value error, line 1, column 4: the expression ends too early"
    assert errors[("project", "x")].startswith("Value error, line 1, column 1: name 'open'")


def test_expr_json_schema_is_a_bounded_string() -> None:
    schema = WhereParams.model_json_schema()["properties"]["where"]
    assert schema["type"] == "string"
    assert schema["maxLength"] == MAX_LENGTH


def test_the_public_names() -> None:
    for name in ("Expr", "Expression", "ExprError", "ExprLimitError", "MissingField"):
        assert name in headwater.__all__
    from headwater.builtin_plugins.transformers import MissingField as FieldsMissing

    assert FieldsMissing is MissingField


# ---------------------------------------------------------------------------------------
# any text: compiled, or refused with ExprError, never another exception
# ---------------------------------------------------------------------------------------

_TOKENS = [*"()[]{}.,:;*%+-/<>=!&|^~@'\"\\ \n\t#", "item", "xs", "1", "0.5", "'a'", "not"]
_TOKENS += ["and", "or", "if", "else", "in", "is", "None", "lambda", "for", "len", "**"]
_TOKENS += ["__class__", "get", "lower", "é", "1e400", "0x", "\x00", "yield", ":=", "*xs"]


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_TOKENS)).map("".join)))
def test_any_text_compiles_or_is_refused_cleanly(text: str) -> None:
    kind, compiled = _outcome(Expression, text)
    if kind == "error":
        assert isinstance(compiled, ExprError), f"{text!r}: {compiled!r}"
        where = (compiled.line, compiled.column)
        assert where == (None, None) or (where[0] >= 1 and where[1] >= 1), f"{text!r}: {where}"
        return
    try:
        compiled({"xs": [1, 2], "a": "b"})
    except (ExprError, SyntaxError, SystemError, RecursionError) as exc:  # compile-time kinds
        raise AssertionError(f"{text!r}: {exc!r} at run time") from exc
    except Exception:  # a run-time error of the expression (TypeError, MissingField...)
        pass


def test_a_tuple_of_slices_compiles_in_both_variants() -> None:
    with pytest.raises(TypeError, match="list indices"):
        Expression("xs[1:2, 0]")({"xs": [1, 2]})
    assert Expression("xs[::-1][:1]")({"xs": [1, 2]}) == [2]
