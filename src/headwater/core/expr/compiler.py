"""Checking and compiling expressions: the parsed tree is walked once per variant, every
node either refused (with line and column) or translated into plain Python.

The fast variant reads names as ``item["name"]`` and guards ``*`` and ``%`` with an
inline type test; the checked variant reads through the helpers that explain errors.
Both go into one generated module whose fast function falls back to the checked one
on ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable
from typing import Any, Final

from .errors import ExprError, ExprLimitError
from .functions import (
    FUNCTIONS,
    GLOBALS,
    GUARDS_BY_NAME,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_NODES,
    MAX_REPEAT,
    STR_METHODS,
)

__all__ = ["compile_text"]

_REFUSED: Final[dict[type[ast.AST], str]] = {
    ast.Lambda: "lambda",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.NamedExpr: "assignment (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Starred: "unpacking (*)",
}

_CONSTANT_TYPES = (str, bytes, int, float, bool, type(None))
_YAML_WORDS = {"true": "True", "false": "False", "null": "None"}
_GUARDS: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Mult: GUARDS_BY_NAME["*"],
    ast.Pow: GUARDS_BY_NAME["**"],
    ast.LShift: GUARDS_BY_NAME["<<"],
    ast.Mod: GUARDS_BY_NAME["%"],
}


def _template(source: str, **parts: ast.expr) -> ast.expr:
    """The expression ``source`` with the names in ``parts`` replaced by those trees."""
    tree = ast.parse(source, mode="eval").body

    class Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return parts.get(node.id, node)

    return Fill().visit(tree)  # type: ignore[no-any-return]


def _load(name: str) -> ast.Name:
    return ast.Name(id=name, ctx=ast.Load())


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_load(name), args=list(args), keywords=[])


def _is_number(node: ast.expr, kinds: tuple[type, ...] = (int, float)) -> bool:
    """A literal number of one of ``kinds`` (never a bool)."""
    return (
        isinstance(node, ast.Constant)
        and type(node.value) in kinds
        and not isinstance(node.value, bool)
    )


class _Translator:
    """Checks a parsed expression and translates it into plain Python.

    ``checked=False`` gives the fast tree (names read as ``item["name"]``);
    ``checked=True`` its twin whose reads and method calls explain their errors.
    """

    def __init__(self, text: str, *, checked: bool) -> None:
        self.lines = text.split("\n")
        self.checked = checked
        self.nodes = 0
        self.names: list[str] = []
        self.temps = 0

    # -- errors ----------------------------------------------------------------------

    def error(self, node: ast.AST, reason: str) -> ExprError:
        line: int = getattr(node, "lineno", 1)
        offset: int = getattr(node, "col_offset", 0)
        if isinstance(node, ast.Attribute) and node.end_lineno and node.end_col_offset:
            # Point at the attribute's name, not at the value it is read from.
            line, offset = node.end_lineno, node.end_col_offset - len(node.attr.encode())
        text = self.lines[line - 1] if line <= len(self.lines) else ""
        column = len(text.encode()[:offset].decode(errors="replace")) + 1
        return ExprError(reason, line, column)

    # -- walking ---------------------------------------------------------------------

    def visit(self, node: ast.expr, depth: int) -> ast.expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(node, f"the expression has too many parts (at most {MAX_NODES})")
        if depth > MAX_DEPTH:
            raise self.error(node, f"the expression nests too deeply (at most {MAX_DEPTH})")
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            what = _REFUSED.get(type(node), type(node).__name__)
            raise self.error(node, f"{what} is not allowed in an expression")
        return method(node, depth + 1)  # type: ignore[no-any-return]

    def each(self, nodes: list[ast.expr], depth: int) -> list[ast.expr]:
        return [self.visit(n, depth) for n in nodes]

    def visit_Constant(self, node: ast.Constant, depth: int) -> ast.expr:
        if type(node.value) not in _CONSTANT_TYPES:
            raise self.error(node, f"the constant {node.value!r} is not allowed")
        return ast.Constant(value=node.value)

    def visit_Name(self, node: ast.Name, depth: int) -> ast.expr:
        name = node.id
        if name == "item":
            return _load("item")
        if name.startswith("__"):
            raise self.error(node, f"name {name!r} is not allowed")
        if name in _YAML_WORDS:
            raise self.error(
                node,
                f"name {name!r} is not allowed: write {_YAML_WORDS[name]} "
                f"(or item[{name!r}] for a field of that name)",
            )
        self.names.append(name)
        key = ast.Constant(value=name)
        if self.checked:
            return _call("_hw_field", _load("item"), key)
        return ast.Subscript(value=_load("item"), slice=key, ctx=ast.Load())

    def visit_BoolOp(self, node: ast.BoolOp, depth: int) -> ast.expr:
        return ast.BoolOp(op=node.op, values=self.each(node.values, depth))

    def visit_UnaryOp(self, node: ast.UnaryOp, depth: int) -> ast.expr:
        return ast.UnaryOp(op=node.op, operand=self.visit(node.operand, depth))

    def visit_BinOp(self, node: ast.BinOp, depth: int) -> ast.expr:
        op = node.op
        if isinstance(op, ast.MatMult):
            raise self.error(node, "the operator @ is not allowed")
        left, right = self.visit(node.left, depth), self.visit(node.right, depth)
        guard = _GUARDS.get(type(op))
        if guard is None:
            return ast.BinOp(left=left, op=op, right=right)
        self.fold(node, guard)
        plain = ast.BinOp(left=left, op=op, right=right)
        if isinstance(op, ast.Mult):
            if _is_number(left, (float,)) or _is_number(right, (float,)):
                return plain  # a float repeats nothing
            if _is_number(right):
                return self.numeric_or("_hw_mul", left, op, right)
            if _is_number(left):
                return self.numeric_or("_hw_mul", right, op, left, swapped=True)
            return _call("_hw_mul", left, right)
        if isinstance(op, ast.Mod):
            if isinstance(left, ast.Constant) and isinstance(left.value, str | bytes):
                kind = type(left.value).__name__
                raise self.error(
                    node,
                    f"'%' on a {kind} is string formatting, which is not allowed in expressions",
                )
            if _is_number(left):
                return plain  # a number on the left: arithmetic, never formatting
            return self.numeric_or("_hw_mod", left, op, right)
        if isinstance(op, ast.Pow):
            return plain if _is_number(right, (float,)) else _call("_hw_pow", left, right)
        if _is_number(right, (int,)) and 0 <= right.value <= 64:  # type: ignore[attr-defined]
            return plain  # a small constant shift grows a number linearly
        return _call("_hw_lshift", left, right)

    def numeric_or(
        self, helper: str, value: ast.expr, op: ast.operator, other: ast.expr, swapped: bool = False
    ) -> ast.expr:
        """``value OP other`` inline when ``value`` is an int or float, else the guard."""
        self.temps += 1
        temp = f"_hw_t{self.temps}"
        fast = f"{temp} OP B" if not swapped else f"B OP {temp}"
        slow = f"{helper}({temp}, B)" if not swapped else f"{helper}(B, {temp})"
        source = (
            f"({fast} if ({temp} := A).__class__ is _hw_int "
            f"or {temp}.__class__ is _hw_float else {slow})"
        )
        return _template(source.replace("OP", _OP_TEXT[type(op)]), A=value, B=other)

    def fold(self, node: ast.BinOp, guard: Callable[[Any, Any], Any]) -> None:
        """Refuse a guarded operation on constants that would exceed a bound."""
        try:
            left, right = _constant(node.left), _constant(node.right)
        except Exception:  # not made of constants, or an error the run time reports
            return
        try:
            guard(left, right)
        except ExprLimitError as exc:
            raise self.error(node, str(exc)) from None
        except Exception:  # other errors are the run time's to report
            return

    def visit_Compare(self, node: ast.Compare, depth: int) -> ast.expr:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, ast.Is | ast.IsNot) and not any(
                isinstance(n, ast.Constant) and n.value is None
                for n in (operands[i], operands[i + 1])
            ):
                raise self.error(node, "'is' is only allowed with None: use == to compare")
        return ast.Compare(
            left=self.visit(node.left, depth),
            ops=node.ops,
            comparators=self.each(node.comparators, depth),
        )

    def visit_IfExp(self, node: ast.IfExp, depth: int) -> ast.expr:
        return ast.IfExp(
            test=self.visit(node.test, depth),
            body=self.visit(node.body, depth),
            orelse=self.visit(node.orelse, depth),
        )

    def visit_Subscript(self, node: ast.Subscript, depth: int) -> ast.expr:
        value, key = self.visit(node.value, depth), self.visit(node.slice, depth)
        sliced = isinstance(key, ast.Slice) or (
            isinstance(key, ast.Tuple) and any(isinstance(e, ast.Slice) for e in key.elts)
        )
        if self.checked and not sliced:  # a slice is only valid inside brackets
            if isinstance(value, ast.Name) and value.id == "item":
                return _call("_hw_field", value, key)
            return _call("_hw_index", value, key, ast.Constant(value=ast.unparse(node.value)))
        return ast.Subscript(value=value, slice=key, ctx=ast.Load())

    def visit_Slice(self, node: ast.Slice, depth: int) -> ast.expr:
        parts = [None if p is None else self.visit(p, depth) for p in (node.lower, node.upper)]
        step = None if node.step is None else self.visit(node.step, depth)
        return ast.Slice(lower=parts[0], upper=parts[1], step=step)

    def visit_List(self, node: ast.List, depth: int) -> ast.expr:
        return ast.List(elts=self.each(node.elts, depth), ctx=ast.Load())

    def visit_Tuple(self, node: ast.Tuple, depth: int) -> ast.expr:
        return ast.Tuple(elts=self.each(node.elts, depth), ctx=ast.Load())

    def visit_Set(self, node: ast.Set, depth: int) -> ast.expr:
        return ast.Set(elts=self.each(node.elts, depth))

    def visit_Dict(self, node: ast.Dict, depth: int) -> ast.expr:
        if any(key is None for key in node.keys):
            raise self.error(node, "unpacking (**) is not allowed in an expression")
        keys = [self.visit(k, depth) for k in node.keys if k is not None]
        return ast.Dict(keys=list(keys), values=self.each(node.values, depth))

    def visit_Attribute(self, node: ast.Attribute, depth: int) -> ast.expr:
        if node.attr.startswith("_"):
            raise self.error(node, f"attribute {node.attr!r} is not allowed")
        if node.attr == "get":
            raise self.error(node, "attribute 'get' is not allowed: write get(value, key)")
        methods = ", ".join(f"{m}()" for m in STR_METHODS)
        raise self.error(
            node, f"attribute {node.attr!r} is not allowed (the str methods are {methods})"
        )

    def visit_Call(self, node: ast.Call, depth: int) -> ast.expr:
        if node.keywords:
            raise self.error(node.keywords[0], "keyword arguments are not allowed")
        func = node.func
        if isinstance(func, ast.Name):
            spec = FUNCTIONS.get(func.id)
            if spec is None:
                names = ", ".join(FUNCTIONS)
                raise self.error(func, f"name {func.id!r} is not allowed (functions: {names})")
            self.arity(node, func.id, len(node.args), spec[1], spec[2])
            return _call(func.id, *self.each(node.args, depth))
        if isinstance(func, ast.Attribute) and func.attr in STR_METHODS:
            fewest, most = STR_METHODS[func.attr]
            self.arity(node, f"{func.attr}", len(node.args), fewest, most)
            value = self.visit(func.value, depth)
            args = self.each(node.args, depth)
            if self.checked:
                method = _call("_hw_method", ast.Constant(value=func.attr), value)
                return ast.Call(func=method, args=args, keywords=[])
            return _call(f"_hw_str_{func.attr}", value, *args)
        if isinstance(func, ast.Attribute):
            return self.visit_Attribute(func, depth)
        raise self.error(node, "only the listed functions and str methods can be called")

    def arity(self, node: ast.Call, name: str, given: int, fewest: int, most: int | None) -> None:
        if given < fewest or (most is not None and given > most):
            want = (
                str(fewest)
                if fewest == most
                else f"{fewest} or more"
                if most is None
                else f"{fewest} to {most}"
            )
            noun = "argument" if want == "1" else "arguments"
            raise self.error(node, f"{name}() takes {want} {noun} ({given} given)")


_OP_TEXT: Final[dict[type[ast.operator], str]] = {ast.Mult: "*", ast.Mod: "%"}


class _NotConstant(Exception):
    """Raised by :func:`_constant` for a tree that is not made of constants only."""


def _constant(node: ast.expr) -> Any:
    """The value of a tree of literals (numbers, strings, lists and tuples of them) under
    arithmetic, for the validation-time check of the guarded operations."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        values = [_constant(element) for element in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _constant(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _constant(node.left), _constant(node.right)
        guard = _GUARDS.get(type(node.op))
        if guard is not None:
            return guard(left, right)
        if isinstance(node.op, ast.Add | ast.Sub):
            value = left + right if isinstance(node.op, ast.Add) else left - right
            if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_REPEAT:
                raise _NotConstant  # too big to fold; the run time builds it if it must
            return value
    raise _NotConstant


_SYNTAX_HINTS: Final = {"&&": "and", "||": "or", "===": "=="}


def _parse(text: str) -> ast.expr:
    """Parse ``text``, mapping syntax errors to :class:`ExprError` with line and column."""
    try:
        with warnings.catch_warnings():
            # Invalid escapes and the like warn at parse time; the text is checked anyway.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        line = exc.lineno or 1
        lines = text.split("\n")
        here = lines[line - 1] if line <= len(lines) else ""
        column = exc.offset if exc.offset else len(here) + 1
        reason = exc.msg or "invalid syntax"
        if reason == "invalid syntax" and column > len(here.rstrip()):
            reason = "the expression ends too early"
        if "too many nested" in reason:
            reason = f"the expression nests too deeply (at most {MAX_DEPTH})"
        elif "null bytes" in reason:
            reason = "the expression contains a NUL character"
        after = here[column - 1 :]
        for bad, good in _SYNTAX_HINTS.items():
            if here[column - 2 : column - 2 + len(bad)] == bad:
                column -= 1  # Python points at the second character of the operator
            elif not after.startswith(bad):
                continue
            reason += f": write '{good}' instead of '{bad}'"
            break
        else:
            if after.startswith("=") and not after.startswith("=="):
                reason += ": write '==' to compare"
        raise ExprError(reason, line, column) from None
    except (RecursionError, MemoryError):
        raise ExprError(f"the expression nests too deeply (at most {MAX_DEPTH})") from None


_MODULE: Final = """
def _hw_expr(item):
    try:
        return FAST
    except _hw_read_errors:
        return _hw_checked(item)

def _hw_checked(item):
    return CHECKED
"""


def compile_text(text: str) -> tuple[Callable[[Any], Any], tuple[str, ...]]:
    """Check ``text`` and compile it: the function of the item and the names it reads."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is {len(text):,} characters long; at most {MAX_LENGTH:,}")
    stripped = text.lstrip()
    skipped = text[: len(text) - len(stripped)]
    try:
        tree = _parse(stripped.rstrip())
        fast_tree = (fast := _Translator(stripped, checked=False)).visit(tree, 0)
        checked_tree = _Translator(stripped, checked=True).visit(tree, 0)
    except ExprError as exc:
        if exc.line is None or not skipped:
            raise
        # Report the place in the text as written, leading blanks included.
        line = exc.line + skipped.count("\n")
        column = exc.column or 1
        if exc.line == 1:
            column += len(skipped) - (skipped.rfind("\n") + 1)
        raise ExprError(exc.reason, line, column) from None
    module = ast.parse(_MODULE)

    class Fill(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return {"FAST": fast_tree, "CHECKED": checked_tree}.get(node.id, node)

    module = ast.fix_missing_locations(Fill().visit(module))
    namespace = dict(GLOBALS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # "'int' object is not subscriptable"
        code = compile(module, "<expr>", "exec")
    exec(code, namespace)  # the translated tree only
    return namespace["_hw_expr"], tuple(dict.fromkeys(fast.names))
