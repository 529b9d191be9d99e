"""Reading YAML files: the one loader of pipeline files, server configurations and jobs
files.

:func:`parse_yaml` is ``yaml.safe_load`` with limits on what a small, hostile or
mistaken file may cost and with the mistakes PyYAML lets pass made errors:

- a **duplicate key** in a mapping is an error naming the key and both lines (PyYAML
  silently keeps the last value); merge keys (``<<: *defaults``) still work, and the
  keys written beside them still win over the merged ones;
- **aliases** may stand for at most :data:`MAX_ALIAS_NODES` nodes in all (no "billion
  laughs"), and an alias inside the node it names (a recursive structure) is refused;
- **nesting** deeper than :data:`MAX_DEPTH` levels is refused (aliases included), before
  it could exhaust the interpreter's stack;
- an **integer** written with more than :data:`MAX_INTEGER_CHARS` characters is refused
  (converting a huge decimal number costs time quadratic in its length);
- a scalar that PyYAML cannot construct (``2024-13-01``, a malformed ``!!timestamp``)
  is a YAML error, never a stray ``ValueError``.

Every problem comes as a :class:`YamlFileError` naming the file, the line and column,
and the problem. :func:`read_yaml` adds reading the file (UTF-8).
:func:`load_yaml_file` turns those errors into the caller's
:class:`~headwater.core.errors.InvalidFileError` subclass, with the problem as its one
issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from .errors import HeadwaterError, InvalidFileError, ValidationIssue

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_DEPTH",
    "MAX_INTEGER_CHARS",
    "YamlFileError",
    "load_yaml_file",
    "parse_yaml",
    "read_yaml",
]

MAX_DEPTH = 100
"""Deepest nesting of collections and scalars accepted, aliases expanded."""

MAX_ALIAS_NODES = 100_000
"""Most nodes that the aliases of one document may stand for, counted expanded."""

MAX_INTEGER_CHARS = 100
"""Longest integer accepted, in characters (sign and underscores excluded)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


class YamlFileError(HeadwaterError):
    """A YAML file could not be read (``unreadable``) or is not valid YAML.

    ``problem`` says what is wrong; ``line`` and ``column`` (1-based) say where, when
    known. ``str()`` names the file too (see :meth:`describe`).
    """

    def __init__(
        self,
        path: str | None,
        problem: str,
        *,
        unreadable: bool = False,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.problem = problem
        self.unreadable = unreadable
        self.line = line
        self.column = column
        super().__init__(self.describe(name_file=True))

    def describe(self, *, name_file: bool = False) -> str:
        """The problem as one line: ``cannot read FILE: ...``, or ``not valid YAML:
        line L, column C: ...`` (``FILE is not valid YAML: ...`` with ``name_file``)."""
        if self.unreadable:
            return f"cannot read {self.path}: {self.problem}"
        where = f"line {self.line}, column {self.column}: " if self.line is not None else ""
        subject = f"{self.path} is not valid YAML" if name_file and self.path else "not valid YAML"
        return f"{subject}: {where}{self.problem}"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the limits and checks of this module."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._measured: dict[int, tuple[int, int]] = {}
        self._alias_nodes = 0

    # -- composing: nesting, aliases, duplicate keys ------------------------------------

    def compose_document(self) -> Node | None:
        node: Node | None = super().compose_document()
        self._measured = {}
        self._alias_nodes = 0
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        anchor: str | None = event.anchor
        if isinstance(event, AliasEvent):
            assert anchor is not None
            return self._compose_alias(parent, index, anchor, mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
        if anchor is not None and anchor in self.anchors:
            line = self.anchors[anchor].start_mark.line + 1
            problem = f"duplicate anchor &{anchor} (first at line {line})"
            raise ComposerError(None, None, problem, mark)
        self._depth += 1
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
        return node

    def _compose_alias(self, parent: Node | None, index: Any, anchor: str, mark: Any) -> Node:
        if anchor in self._open_anchors:
            problem = f"alias *{anchor} is inside the node it names (a recursive structure)"
            raise ComposerError(None, None, problem, mark)
        node = super().compose_node(parent, index)  # an undefined alias is an error there
        assert node is not None
        size, depth = self._measure(node)
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            problem = f"aliases stand for more than {MAX_ALIAS_NODES:,} nodes in all"
            raise ComposerError(None, None, problem, mark)
        if self._depth + depth > MAX_DEPTH:
            problem = f"nesting deeper than {MAX_DEPTH} levels (through alias *{anchor})"
            raise ComposerError(None, None, problem, mark)
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
                problem = (
                    f"duplicate merge key << (first at line {line}); merge several "
                    "mappings with <<: [*a, *b]"
                    if key == ("<<",)
                    else f"duplicate key {key!r} (first at line {line})"
                )
                raise ConstructorError(None, None, problem, key_node.start_mark)
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

    # -- constructing: integers, and no stray exceptions ----------------------------------

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a scalar PyYAML cannot build (2024-13-01, ...)
            kind = str(node.tag).rsplit(":", 1)[-1]
            what = f"{kind} {node.value!r}" if isinstance(node, ScalarNode) else kind
            why = f": {exc}" if isinstance(exc, ValueError) else f" (not a valid {kind})"
            raise ConstructorError(
                None, None, f"cannot read {what}{why}", node.start_mark
            ) from None

    def construct_bounded_int(self, node: ScalarNode) -> int:
        text = str(node.value).replace("_", "").lstrip("+-")
        if len(text) > MAX_INTEGER_CHARS:
            raise ConstructorError(
                None,
                None,
                f"an integer of {len(text)} characters is too large (at most {MAX_INTEGER_CHARS})",
                node.start_mark,
            )
        value: int = self.construct_yaml_int(node)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_bounded_int)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse_yaml(text: str, *, path: str | Path | None = None) -> Any:
    """Parse one YAML document (``None`` for an empty one), safely and within limits.

    Raises :class:`YamlFileError` (naming ``path``) for invalid YAML, a duplicate key, or
    a document over one of the limits.
    """
    name = str(path) if path is not None else None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks the characters already
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if exc.context and problem.startswith("but "):  # "expected X, but found Y"
            problem = f"{exc.context}, {problem}"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise YamlFileError(name, problem, line=line, column=column) from None
    except ReaderError as exc:
        character = exc.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        line, column = _position(text, exc.position)
        problem = f"unacceptable character {shown}: {exc.reason}"
        raise YamlFileError(name, problem, line=line, column=column) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(name, str(exc).splitlines()[0]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Read and parse the UTF-8 YAML file at ``path`` (see :func:`parse_yaml`).

    Raises :class:`YamlFileError`: ``unreadable`` (a missing file, a directory, bytes
    that are not UTF-8) or not valid YAML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise YamlFileError(str(path), problem, unreadable=True) from None
    except OSError as exc:
        raise YamlFileError(str(path), str(exc.strerror or exc), unreadable=True) from None
    return parse_yaml(text, path=path)


def load_yaml_file(path: str | Path, error: type[InvalidFileError]) -> Any:
    """:func:`read_yaml`, raising ``error`` (e.g. ``PipelineValidationError``) with the
    problem as its one issue and the file as its source."""
    try:
        return read_yaml(path)
    except YamlFileError as exc:
        raise error([ValidationIssue("", exc.describe())], str(path)) from None
