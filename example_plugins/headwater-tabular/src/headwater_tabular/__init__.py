"""headwater-tabular: records from CSV / JSON Lines, per-record enrichment, running stats.

An example of a *data-processing* plugin. It contributes three components:

``tabular.read`` (action)
    Streams the records of a CSV or JSON Lines file as dicts, reading in a worker thread,
    reporting progress in bytes, resuming at a record (``start_at``) and either failing
    on or skipping malformed records.
``tabular.enrich`` (map transformer)
    Adds computed fields to each record from safe arithmetic expressions
    (``total: price * qty``) and numbers the records. A failing expression raises, so the
    pipeline's ``on_error`` policy (``fail``, ``skip``, ``retry``, dead letters) applies.
``tabular.stats`` (stream transformer, stateful)
    Keeps running statistics (count, sum, mean, standard deviation, min, max) of numeric
    fields, overall or per group, and emits a snapshot every ``every`` records and a
    final one at the end of the stream.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import operator
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import IO, Any, Literal

import anyio
import headwater
from headwater import Register
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "EnrichParams",
    "ReadParams",
    "RunningStats",
    "StatsParams",
    "compile_expression",
    "enrich",
    "read",
    "register_actions",
    "register_transformers",
    "stats",
]

_BATCH = 1000
"""Records read per worker-thread call."""


# ---------------------------------------------------------------------------------------
# tabular.read
# ---------------------------------------------------------------------------------------


class ReadParams(BaseModel):
    """Params of ``tabular.read``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(description="CSV, TSV or JSON Lines file to read.")
    format: Literal["auto", "csv", "jsonl"] = Field(
        "auto", description="File format; auto: .jsonl / .ndjson are JSON Lines, others CSV."
    )
    delimiter: str | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="CSV field delimiter (default: a tab for .tsv files, else a comma).",
    )
    encoding: str = Field("utf-8", description="Text encoding of the file.")
    coerce: bool = Field(
        True,
        description="CSV only: turn values that look like numbers into int / float, and "
        "empty values into null.",
    )
    start_at: int = Field(
        0, ge=0, description="Number of records to skip first (to resume an interrupted run)."
    )
    limit: int | None = Field(None, ge=0, description="Stop after this many records.")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail",
        description="A malformed record (bad JSON, wrong number of CSV fields): fail the "
        "stage naming its line, or skip it (counted, reported in a status message).",
    )


def _number(value: str) -> Any:
    """``"12"`` -> 12, ``"1.5"`` -> 1.5, ``""`` -> None; anything else stays a string."""
    if value == "":
        return None
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


class BadRecord(ValueError):
    """A record that cannot be read; the message names the file and the line."""


class _Reader:
    """Blocking reader of records; :meth:`batch` runs in a worker thread."""

    def __init__(self, params: ReadParams) -> None:
        self.params = params
        path = params.path
        fmt = params.format
        if fmt == "auto":
            fmt = "jsonl" if path.lower().endswith((".jsonl", ".ndjson")) else "csv"
        self.format = fmt
        self.delimiter = params.delimiter or ("\t" if path.lower().endswith(".tsv") else ",")
        self.binary: IO[bytes] | None = None
        self.size = 0
        self.records: Iterator[tuple[int, Any]] | None = None
        self.emitted = 0
        self.skipped = 0
        self.bad = 0

    def open(self) -> None:
        """Open the file and skip the first ``start_at`` records."""
        self.binary = open(self.params.path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self.binary.fileno()).st_size
        text = io.TextIOWrapper(self.binary, encoding=self.params.encoding, newline="")
        self.records = self._csv(text) if self.format == "csv" else self._jsonl(text)

    @property
    def position(self) -> int:
        """Approximate bytes read so far (the buffered reader's position)."""
        binary = self.binary
        return binary.tell() if binary is not None and not binary.closed else self.size

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.binary is not None:
            self.binary.close()

    def _bad(self, line: int, problem: str) -> None:
        if self.params.on_bad_record == "fail":
            raise BadRecord(f"{self.params.path}, line {line}: {problem}")
        self.bad += 1

    def _csv(self, text: IO[str]) -> Iterator[tuple[int, Any]]:
        reader = csv.reader(text, delimiter=self.delimiter)
        header = next(reader, None)
        if header is None:
            return
        width = len(header)
        coerce = self.params.coerce
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != width:
                self._bad(reader.line_num, f"{len(row)} fields, the header has {width}")
                continue
            values = [_number(v) for v in row] if coerce else row
            yield reader.line_num, dict(zip(header, values, strict=True))

    def _jsonl(self, text: IO[str]) -> Iterator[tuple[int, Any]]:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self._bad(number, f"not JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(record, dict):
                self._bad(number, f"a JSON {type(record).__name__}, not an object")
                continue
            yield number, record

    def batch(self) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``_BATCH`` records (after skipping and before the limit); True at the end."""
        assert self.records is not None
        out: list[dict[str, Any]] = []
        limit = self.params.limit
        for _line, record in self.records:
            if self.skipped < self.params.start_at:
                self.skipped += 1
                continue
            if limit is not None and self.emitted >= limit:
                return out, True
            out.append(record)
            self.emitted += 1
            if len(out) >= _BATCH:
                return out, limit is not None and self.emitted >= limit
        return out, True


@headwater.action(
    "tabular.read",
    params=ReadParams,
    output="one dict per record (CSV: header -> value; JSON Lines: the object)",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def read(params: ReadParams, ctx: headwater.StreamContext) -> AsyncIterator[list[Any]]:
    """Stream the records of a CSV / TSV / JSON Lines file, in constant memory.

    Progress is reported in bytes. ``start_at`` skips records already processed by an
    earlier run. Malformed records fail the stage with their line number, or are
    skipped and counted with ``on_bad_record: skip``.
    """
    reader = _Reader(params)
    try:
        await anyio.to_thread.run_sync(reader.open)
        done = False
        while not done:
            if ctx.cancelled:
                return
            records, done = await anyio.to_thread.run_sync(reader.batch)
            ctx.progress(reader.position, reader.size, f"{reader.emitted:,} records")
            if records:
                yield records
        if reader.bad:
            ctx.status(f"skipped {reader.bad} malformed record(s) in {params.path}")
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------
# Safe expressions for tabular.enrich
# ---------------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "int": int,
    "float": float,
    "str": str,
    "len": len,
    "lower": str.lower,
    "upper": str.upper,
}
_MAX_EXPONENT = 1000

Expression = Callable[[Mapping[str, Any]], Any]
"""A compiled expression: record -> value."""


def compile_expression(source: str) -> Expression:
    """Compile a safe arithmetic expression over a record's fields.

    Allowed: numbers, strings, ``True`` / ``False`` / ``None``, field names (or
    ``field("any name")``), ``+ - * / // % **``, comparisons, ``and`` / ``or`` / ``not``,
    ``a if cond else b`` and the functions abs, round, min, max, int, float, str, len,
    lower, upper. Nothing else (no attributes, no imports, no other calls).

    :raises ValueError: Naming what is not allowed.
    """
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{source!r} is not a valid expression: {exc.msg}") from None
    return _compile(tree.body, source)


def _compile(node: ast.expr, source: str) -> Expression:
    if isinstance(node, ast.Constant) and isinstance(
        node.value, int | float | str | bool | type(None)
    ):
        value = node.value
        return lambda record: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in _FUNCTIONS:
            raise ValueError(f"{source!r}: {name} is a function; call it: {name}(...)")
        return _field(name)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, source), _compile(node.right, source)
        if isinstance(node.op, ast.Pow):
            return lambda record: _power(left(record), right(record))
        return lambda record: op(left(record), right(record))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        unary = _UNARY[type(node.op)]
        operand = _compile(node.operand, source)
        return lambda record: unary(operand(record))
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, source) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda record: all(p(record) for p in parts)
        return lambda record: any(p(record) for p in parts)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        first = _compile(node.left, source)
        rest = [
            (_COMPARE[type(op)], _compile(c, source))
            for op, c in zip(node.ops, node.comparators, strict=True)
        ]

        def compare(record: Mapping[str, Any]) -> bool:
            left = first(record)
            for op, comparator in rest:
                right = comparator(record)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare
    if isinstance(node, ast.IfExp):
        test, body, orelse = (_compile(n, source) for n in (node.test, node.body, node.orelse))
        return lambda record: body(record) if test(record) else orelse(record)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call(node, source)
    raise ValueError(f"{source!r}: {ast.unparse(node)!r} is not allowed in an expression")


def _call(node: ast.Call, source: str) -> Expression:
    assert isinstance(node.func, ast.Name)
    name = node.func.id
    if name == "field":
        arg = node.args[0] if len(node.args) == 1 else None
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            raise ValueError(f"{source!r}: field() takes one string, the field name")
        return _field(arg.value)
    function = _FUNCTIONS.get(name)
    if function is None:
        known = ", ".join(sorted([*_FUNCTIONS, "field"]))
        raise ValueError(f"{source!r}: unknown function {name!r} (known: {known})")
    args = [_compile(a, source) for a in node.args]
    return lambda record: function(*(a(record) for a in args))


def _field(name: str) -> Expression:
    def get(record: Mapping[str, Any]) -> Any:
        try:
            return record[name]
        except KeyError:
            raise KeyError(f"the record has no field {name!r}") from None

    return get


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(exponent, int | float) and abs(exponent) > _MAX_EXPONENT:
        raise ValueError(f"exponent {exponent} is too large")
    return base**exponent


# ---------------------------------------------------------------------------------------
# tabular.enrich
# ---------------------------------------------------------------------------------------


class EnrichParams(BaseModel):
    """Params of ``tabular.enrich``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    compute: dict[str, str] = Field(
        default_factory=dict,
        description="New fields and their expressions, evaluated in order (a later one may "
        "use an earlier one), e.g. {total: price * qty, big: total > 100}.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Values for fields a record lacks (set first)."
    )
    number_field: str | None = Field(
        None, description="Name of a field to add holding the record's 1-based number."
    )
    drop: list[str] = Field(default_factory=list, description="Fields to remove (last).")

    @field_validator("compute")
    @classmethod
    def _expressions_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            try:
                compile_expression(source)
            except ValueError as exc:
                raise ValueError(f"compute.{name}: {exc}") from None
        return value


@headwater.transformer(
    "tabular.enrich",
    kind="map",
    params=EnrichParams,
    factory=True,
    output="the record with computed fields added",
    capabilities=("stateful",),
)
def enrich(params: EnrichParams, ctx: headwater.StreamContext) -> Callable[[Any], Any]:
    """Add computed fields to every record (safe arithmetic over its fields).

    An expression that fails (a missing field, a division by zero, a type error) raises
    an error naming the field and the expression, so that the step's ``on_error`` policy
    decides: fail the run, skip the record, retry, or send it to the dead letter sink.
    """
    compiled = [
        (name, source, compile_expression(source)) for name, source in params.compute.items()
    ]
    defaults = params.defaults
    number_field = params.number_field
    drop = params.drop
    count = 0

    def apply(record: Any) -> Any:
        nonlocal count
        if not isinstance(record, Mapping):
            raise TypeError(f"tabular.enrich needs dict records, got {type(record).__name__}")
        count += 1
        out = {**defaults, **record}
        if number_field is not None:
            out[number_field] = count
        for name, source, expression in compiled:
            try:
                out[name] = expression(out)
            except Exception as exc:
                reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                raise ValueError(f"computing {name} = {source}: {reason}") from exc
        for name in drop:
            out.pop(name, None)
        return out

    return apply


# ---------------------------------------------------------------------------------------
# tabular.stats
# ---------------------------------------------------------------------------------------


class RunningStats:
    """Count, sum, mean, standard deviation, min and max in one pass (Welford)."""

    __slots__ = ("_m2", "count", "maximum", "mean", "minimum", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.mean = 0.0
        self._m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, value: float) -> None:
        """Take one value into account."""
        self.count += 1
        self.total += value
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    @property
    def stdev(self) -> float | None:
        """Sample standard deviation (None for fewer than two values)."""
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else None

    def snapshot(self) -> dict[str, Any]:
        """The figures so far, JSON-serialisable."""
        return {
            "count": self.count,
            "sum": self.total,
            "mean": self.mean if self.count else None,
            "stdev": self.stdev,
            "min": self.minimum if self.count else None,
            "max": self.maximum if self.count else None,
        }


class StatsParams(BaseModel):
    """Params of ``tabular.stats``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    fields: list[str] | None = Field(
        None, description="Numeric fields to follow (None: every field holding a number)."
    )
    group_by: str | None = Field(None, description="Keep separate statistics per value of this.")
    every: int = Field(
        1000, ge=1, description="Emit a snapshot after every this many records (and at the end)."
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@headwater.transformer(
    "tabular.stats",
    kind="stream",
    params=StatsParams,
    output="{records, final, stats: {field: {count, sum, mean, stdev, min, max}}} "
    "(with group_by: groups: {value: {field: ...}})",
    capabilities=("stateful", "progress"),
)
async def stats(
    items: AsyncIterator[Any], params: StatsParams, ctx: headwater.StreamContext
) -> AsyncIterator[dict[str, Any]]:
    """Running statistics of numeric fields, emitted every ``every`` records and at the end.

    Non-numeric values of a followed field are counted as ``ignored``, never an error:
    a statistics step should not fail a data stream.
    """
    groups: dict[Any, dict[str, RunningStats]] = {}
    records = 0
    ignored = 0
    wanted = set(params.fields) if params.fields is not None else None

    def snapshot(final: bool) -> dict[str, Any]:
        def figures(table: dict[str, RunningStats]) -> dict[str, Any]:
            return {name: s.snapshot() for name, s in sorted(table.items())}

        out: dict[str, Any] = {"records": records, "final": final, "ignored": ignored}
        if params.group_by is None:
            out["stats"] = figures(groups.get(None, {}))
        else:
            out["groups"] = {str(key): figures(table) for key, table in groups.items()}
        return out

    try:
        async for record in items:
            records += 1
            if isinstance(record, Mapping):
                key = record.get(params.group_by) if params.group_by is not None else None
                table = groups.setdefault(key, {})
                for name, value in record.items():
                    if wanted is not None and name not in wanted:
                        continue
                    if _is_number(value):
                        table.setdefault(name, RunningStats()).add(float(value))
                    elif wanted is not None:
                        ignored += 1
            else:
                ignored += 1
            if records % params.every == 0:
                ctx.progress(records, None)
                yield snapshot(final=False)
        yield snapshot(final=True)
    finally:
        # runs on cancellation too: nothing to release here, but say how far we got
        ctx.logger.debug("tabular.stats saw %d records", records)


@headwater.hookimpl
def register_actions(register: Register) -> None:
    """Contribute ``tabular.read``."""
    register(read)


@headwater.hookimpl
def register_transformers(register: Register) -> None:
    """Contribute ``tabular.enrich`` and ``tabular.stats``."""
    register(enrich)
    register(stats)
