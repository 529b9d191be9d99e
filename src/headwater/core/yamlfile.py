"""Reading YAML files: the one loader of pipeline files, server configurations and jobs
files (JSON files too: JSON is YAML).

:func:`parse_yaml` is ``yaml.safe_load`` with limits on what a small, hostile or
mistaken file may cost, counted while the file is composed (before any of it is built),
and with the mistakes PyYAML lets pass made errors:

- a **duplicate key** in a mapping is an error naming the key and both lines (PyYAML
  silently keeps the last value); merge keys (``<<: *defaults``) still work, and the
  keys written beside them still win over the merged ones;
- a document may stand for at most :data:`MAX_NODES` nodes, **aliases expanded** (no
  "billion laughs"), and an alias inside the node it names (a recursive structure) is
  refused;
- **nesting** deeper than :data:`MAX_DEPTH` levels is refused (aliases included), before
  it could exhaust the interpreter's stack;
- an **integer** of more than :data:`MAX_INTEGER_DIGITS` digits is refused (converting a
  huge decimal number costs time quadratic in its length);
- a scalar that PyYAML cannot construct (``2024-13-01``, a malformed ``!!timestamp``)
  is an error, never a stray ``ValueError``;
- :func:`read_yaml` refuses a file larger than :data:`MAX_FILE_BYTES`.

:func:`read_yaml` also substitutes ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}``
in the string values of the file (see :mod:`headwater.core.substitution`), once they are
parsed, recording what it inserted as secrets.

Every problem comes as a :class:`YamlFileError` naming the file, the line, the path in
the document and the problem: ``pipe.yaml:6: sources.n.params.stop: integer has 5000
digits (limit 100)``. :func:`load_yaml_file` turns it into the caller's
:class:`~headwater.core.errors.InvalidFileError` subclass, with the problem as its one
issue.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from .errors import HeadwaterError, InvalidFileError, ValidationIssue, format_loc
from .substitution import Substitution, SubstitutionError, needs_substitution

if TYPE_CHECKING:
    from .secrets import Secrets

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_INTEGER_DIGITS",
    "MAX_NODES",
    "YamlFileError",
    "load_yaml_file",
    "parse_yaml",
    "read_yaml",
]

MAX_DEPTH: Final = 100
"""Deepest nesting of collections and scalars accepted, aliases expanded."""

MAX_NODES: Final = 100_000
"""Most nodes (scalars and collections, keys included) one document may stand for,
counted with its aliases expanded."""

MAX_INTEGER_DIGITS: Final = 100
"""Longest integer accepted, in digits (sign, base prefix and underscores excluded)."""

MAX_FILE_BYTES: Final = 1024 * 1024
"""Largest file :func:`read_yaml` reads."""

_SHOWN_PARTS: Final = 12
"""Components of a path shown in a message; a deeper path ends with ``...``."""

_INT_TAG: Final = "tag:yaml.org,2002:int"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_VALUE_TAG: Final = "tag:yaml.org,2002:value"


class YamlFileError(HeadwaterError):
    """A YAML file could not be read (``unreadable``), is not valid YAML, or breaks one
    of the loader's limits.

    ``problem`` says what is wrong; ``line`` and ``column`` (1-based) say where, when
    known, and ``where`` is the path in the document (``sources.n.params.stop``, empty
    at the top). ``syntax`` is true when the text is not YAML at all (rather than YAML
    over a limit, or a value that cannot be built). ``str()`` names the file too (see
    :meth:`describe`).
    """

    def __init__(
        self,
        path: str | None,
        problem: str,
        *,
        unreadable: bool = False,
        line: int | None = None,
        column: int | None = None,
        where: str = "",
        syntax: bool = False,
    ) -> None:
        self.path = path
        self.syntax = syntax
        self.problem = problem
        self.unreadable = unreadable
        self.line = line
        self.column = column
        self.where = where
        super().__init__(self.describe(name_file=True))

    def issue(self) -> ValidationIssue:
        """The problem as a :class:`ValidationIssue` (path in the document, line)."""
        if self.unreadable:
            return ValidationIssue("", self.describe(name_file=True))
        return ValidationIssue(self.where, self.problem, self.line)

    def describe(self, *, name_file: bool = False) -> str:
        """The problem as one line: ``FILE:LINE: PATH: PROBLEM`` (without ``FILE`` unless
        ``name_file``; ``line L: ...`` then), or ``cannot read FILE: ...``."""
        if self.unreadable:
            return f"cannot read {self.path}: {self.problem}"
        return self.issue().located(self.path if name_file else None)


class _Problem(yaml.YAMLError):
    """A problem found by :class:`_Loader`, with its place (turned into YamlFileError)."""

    def __init__(self, problem: str, mark: Any, where: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark
        self.where = where


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the limits, checks and substitution of this module."""

    def __init__(self, stream: str, substitution: Substitution | None = None) -> None:
        super().__init__(stream)
        self._substitution = substitution
        self._depth = 0
        self._path: list[str | int] = []
        self._open_anchors: set[str] = set()
        self._measured: dict[int, tuple[int, int]] = {}
        self._nodes = 0
        self._to_substitute: dict[int, str] = {}
        self.error_path: str | None = None
        """Where the first error raised by PyYAML while composing was (for its message)."""

    def _where(self, *extra: str | int) -> str:
        parts = [*self._path, *extra]
        if len(parts) > _SHOWN_PARTS:  # deep nesting: the start says enough
            return format_loc(parts[:_SHOWN_PARTS]) + "..."
        return format_loc(parts)

    def _fail(self, problem: str, mark: Any, *extra: str | int) -> _Problem:
        return _Problem(problem, mark, self._where(*extra))

    # -- composing: size, nesting, aliases, integers, duplicate keys ----------------------

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        anchor: str | None = event.anchor
        part = _part(parent, index)
        if part is not None:
            self._path.append(part)
        try:
            if isinstance(event, AliasEvent):
                assert anchor is not None
                return self._compose_alias(parent, index, anchor, mark)
            self._count(1, mark, alias=None)
            if self._depth >= MAX_DEPTH:
                raise self._fail(f"nesting deeper than {MAX_DEPTH} levels", mark)
            if anchor is not None and anchor in self.anchors:
                line = self.anchors[anchor].start_mark.line + 1
                raise self._fail(f"duplicate anchor &{anchor} (first at line {line})", mark)
            self._depth += 1
            if anchor is not None:
                self._open_anchors.add(anchor)
            try:
                node: Node | None = super().compose_node(parent, index)
            finally:
                self._depth -= 1
                if anchor is not None:
                    self._open_anchors.discard(anchor)
            if isinstance(node, ScalarNode):
                self._check_scalar(node, is_key=parent is not None and index is None)
            return node
        except yaml.MarkedYAMLError:
            if self.error_path is None:
                self.error_path = self._where()
            raise
        finally:
            if part is not None:
                self._path.pop()

    def _check_scalar(self, node: ScalarNode, *, is_key: bool) -> None:
        if node.tag == _INT_TAG:
            digits = _digits(str(node.value))
            if digits > MAX_INTEGER_DIGITS:
                raise self._fail(
                    f"integer has {digits} digits (limit {MAX_INTEGER_DIGITS})", node.start_mark
                )
        elif (
            node.tag == _STR_TAG
            and not is_key
            and self._substitution is not None
            and needs_substitution(str(node.value))
        ):
            self._to_substitute[id(node)] = self._where()

    def _count(self, nodes: int, mark: Any, *, alias: str | None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            if alias is None:
                raise self._fail(f"the document has more than {MAX_NODES:,} nodes", mark)
            raise self._fail(
                f"aliases expand the document to more than {MAX_NODES:,} nodes (at *{alias})",
                mark,
            )

    def _compose_alias(self, parent: Node | None, index: Any, anchor: str, mark: Any) -> Node:
        if anchor in self._open_anchors:
            problem = f"alias *{anchor} is inside the node it names (a recursive structure)"
            raise self._fail(problem, mark)
        node = super().compose_node(parent, index)  # an undefined alias is an error there
        assert node is not None
        size, depth = self._measure(node)
        self._count(size, mark, alias=anchor)
        if self._depth + depth > MAX_DEPTH:
            problem = f"nesting deeper than {MAX_DEPTH} levels (through alias *{anchor})"
            raise self._fail(problem, mark)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:  # (the stubs' type is wrong)
        node: MappingNode = super().compose_mapping_node(anchor)
        first: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                continue  # a collection as a key is unhashable: the constructor says so
            if key_node.tag == _MERGE_TAG:
                key: Any = ("<<",)
            elif key_node.tag == _VALUE_TAG:
                key = "="
            else:
                key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue
            if earlier is not key_node:
                line = earlier.start_mark.line + 1
                if key == ("<<",):
                    problem = (
                        f"duplicate merge key << (first at line {line}); merge several "
                        "mappings with <<: [*a, *b]"
                    )
                    raise self._fail(problem, key_node.start_mark, "<<")
                problem = f"duplicate key {key!r} (first at line {line})"
                raise self._fail(problem, key_node.start_mark, str(key_node.value))
        return node

    def _measure(self, node: Node) -> tuple[int, int]:
        """``(nodes, depth)`` of ``node`` with its aliases expanded (memoised)."""
        known = self._measured.get(id(node))
        if known is not None:
            return known
        size, depth = 1, 1
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        for child in children:
            child_size, child_depth = self._measure(child)
            size += child_size
            depth = max(depth, child_depth + 1)
        self._measured[id(node)] = (size, depth)
        return size, depth

    # -- constructing: substitution, and no stray exceptions ------------------------------

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a scalar PyYAML cannot build (2024-13-01, ...)
            kind = str(node.tag).rsplit(":", 1)[-1]
            what = f"{kind} {node.value!r}" if isinstance(node, ScalarNode) else kind
            why = f": {exc}" if isinstance(exc, ValueError) else f" (not a valid {kind})"
            raise _Problem(f"cannot read {what}{why}", node.start_mark, "") from None

    def construct_substituted_str(self, node: ScalarNode) -> str:
        """A string value, its ``${...}`` substituted (when composing marked it)."""
        value: str = self.construct_scalar(node)
        where = self._to_substitute.get(id(node))
        if where is None or self._substitution is None:
            return value
        try:
            return self._substitution.apply(value)
        except SubstitutionError as exc:
            raise _Problem(str(exc), node.start_mark, where) from None


_Loader.add_constructor(_STR_TAG, _Loader.construct_substituted_str)


def _part(parent: Node | None, index: Any) -> str | int | None:
    """The path component of a node composed as ``compose_node(parent, index)``: a
    sequence index, the key of a mapping value, or None (the root, or a key)."""
    if parent is None or index is None:
        return None
    if isinstance(index, int):
        return index
    if isinstance(index, ScalarNode):
        return "<<" if index.tag == _MERGE_TAG else str(index.value)
    return "?"


def _digits(text: str) -> int:
    """Digits of an integer as YAML writes it (``-0x_ff``, ``1_000``, ``1:30``)."""
    text = text.replace("_", "").lstrip("+-")
    if text[:2].lower() in ("0x", "0o", "0b"):
        text = text[2:]
    return sum(c.isalnum() for c in text)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse_yaml(
    text: str, *, path: str | Path | None = None, substitution: Substitution | None = None
) -> Any:
    """Parse one YAML document (``None`` for an empty one), safely and within limits.

    With ``substitution``, the ``${...}`` of every string value are substituted.
    Raises :class:`YamlFileError` (naming ``path``) for invalid YAML, a duplicate key, a
    document over one of the limits, or a substitution that fails.
    """
    name = str(path) if path is not None else None
    loader: _Loader | None = None
    try:
        loader = _Loader(text, substitution)  # checks the characters already
        return loader.get_single_data()
    except _Problem as exc:
        line, column = exc.mark.line + 1, exc.mark.column + 1
        raise YamlFileError(name, exc.problem, line=line, column=column, where=exc.where) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if exc.context and problem.startswith("but "):  # "expected X, but found Y"
            problem = f"{exc.context}, {problem}"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        at = f" (column {column})" if column is not None else ""
        where = (loader.error_path if loader is not None else None) or ""
        syntax = not isinstance(exc, ConstructorError)  # a tag it cannot build is valid YAML
        if syntax:
            problem = f"not valid YAML: {problem}"
        raise YamlFileError(
            name, f"{problem}{at}", line=line, column=column, where=where, syntax=syntax
        ) from None
    except ReaderError as exc:
        character = exc.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        line, column = _position(text, exc.position)
        problem = f"not valid YAML: unacceptable character {shown}: {exc.reason}"
        raise YamlFileError(name, problem, line=line, column=column, syntax=True) from None
    except yaml.YAMLError as exc:
        problem = f"not valid YAML: {str(exc).splitlines()[0]}"
        raise YamlFileError(name, problem, syntax=True) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(
    path: str | Path,
    *,
    substitute: bool = True,
    secrets: Secrets | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Read and parse the UTF-8 YAML file at ``path`` (see :func:`parse_yaml`).

    Unless ``substitute`` is false, ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}``
    are substituted in its string values (``environ`` defaults to ``os.environ``;
    ``PATH`` is relative to the file's folder), and the values read from the environment
    and from files are added to ``secrets``.

    Raises :class:`YamlFileError`: ``unreadable`` (a missing file, a directory, bytes
    that are not UTF-8, more than :data:`MAX_FILE_BYTES`), not valid YAML, over a limit,
    or a substitution that fails.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(str(path), str(exc.strerror or exc), unreadable=True) from None
    if len(data) > MAX_FILE_BYTES:
        problem = f"larger than {MAX_FILE_BYTES:,} bytes (the limit for configuration files)"
        raise YamlFileError(str(path), problem, unreadable=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise YamlFileError(str(path), problem, unreadable=True) from None
    substitution = (
        Substitution(path.parent, environ=environ, secrets=secrets) if substitute else None
    )
    return parse_yaml(text, path=path, substitution=substitution)


def load_yaml_file(
    path: str | Path,
    error: type[InvalidFileError],
    *,
    secrets: Secrets | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """:func:`read_yaml` (substituting, see there), raising ``error`` (e.g.
    ``PipelineValidationError``) with the problem as its one issue and the file as its
    source."""
    try:
        return read_yaml(path, secrets=secrets, environ=environ)
    except YamlFileError as exc:
        raise error([exc.issue()], str(path)) from None
