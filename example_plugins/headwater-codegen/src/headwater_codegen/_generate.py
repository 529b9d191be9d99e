"""The code generator behind ``codegen.client``: JSON Schema / OpenAPI 3 -> typed Python.

Models become ``TypedDict`` classes (``NotRequired`` for optional properties), other
named schemas become type aliases, and an OpenAPI document's operations become the
methods of a small client class built on ``urllib`` (no dependencies). The output is
produced unit by unit (a model, an operation) so that it can be streamed.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerationError", "Generator", "Unit", "load_document"]

_WIDTH = 99
"""Longest generated line before a signature or call is split, one argument per line."""

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class GenerationError(ValueError):
    """The document cannot be turned into code; the message says where and why."""


def load_document(text: str, name: str) -> dict[str, Any]:
    """Parse a JSON (or, by extension, YAML) document; errors name the file and position."""
    if name.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GenerationError(f"{name} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenerationError(
                f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
    if not isinstance(data, dict):
        raise GenerationError(f"{name} must hold a JSON object, not {type(data).__name__}")
    return data


def _words(text: str) -> list[str]:
    """``"petStore-ID v2"`` -> ``["pet", "Store", "ID", "v2"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def class_name(text: str) -> str:
    """A PascalCase identifier for a schema name."""
    name = "".join(w[:1].upper() + w[1:] for w in _words(text)) or "Model"
    return f"Model{name}" if name[0].isdigit() else name


def snake_name(text: str) -> str:
    """A snake_case identifier, never a keyword."""
    name = "_".join(w.lower() for w in _words(text)) or "value"
    if name[0].isdigit():
        name = f"n_{name}"
    return f"{name}_" if keyword.iskeyword(name) or name in {"self", "body"} else name


def _literal(value: Any) -> str | None:
    """A value usable in ``Literal[...]``, as source; None when it is not one."""
    if value is None or isinstance(value, bool | int | str):
        return repr(value)
    return None


def _escape(key: str) -> str:
    """A key as a JSON pointer token (``/`` -> ``~1``, ``~`` -> ``~0``)."""
    return key.replace("~", "~0").replace("/", "~1")


def _quote(text: str) -> str:
    """``text`` as a string literal (a forward reference), double-quoted when possible."""
    return f'"{text}"' if '"' not in text and "\\" not in text else repr(text)


def _docstring(text: str | None, fallback: str, indent: str) -> list[str]:
    """A docstring's lines: the first paragraph of ``text`` (or ``fallback``), escaped."""
    body = " ".join((text or "").split("\n\n")[0].split())
    if body and not body.endswith("."):
        body += "."
    body = (body or fallback).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if len(indent) + len(body) + 6 <= _WIDTH:
        return [f'{indent}"""{body}"""']
    lines = [f'{indent}"""']
    line = ""
    for word in body.split():
        if line and len(indent) + len(line) + 1 + len(word) > _WIDTH:
            lines.append(f"{indent}{line}")
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines += [f"{indent}{line}", f'{indent}"""']
    return lines


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if "Any" in unique:
        return "Any"
    if "None" in unique:  # None last, the way people write it
        unique = [p for p in unique if p != "None"] + ["None"]
    return " | ".join(unique) if unique else "Any"


@dataclass(slots=True)
class Unit:
    """One piece of output: a model, an operation, the header; streamed as it is made."""

    name: str
    lines: list[str]


@dataclass(slots=True)
class _Model:
    """A named schema to emit: a ``TypedDict`` or a type alias."""

    name: str
    schema: dict[str, Any]
    where: str
    bases: list[str] = field(default_factory=list)


class Generator:
    """Turns one document into units of Python source.

    :param document: A JSON Schema or an OpenAPI 3.x document.
    :param source: Its name, quoted in the generated module's docstring.
    :param client_name: Name of the client class (OpenAPI); default from the title.
    :param base_url: Default base URL of the client (default: the first server's).
    :param models_only: Emit the models only, no client.
    :raises GenerationError: For an unsupported document or a ``$ref`` that does not
        resolve (every reference is checked before any output is produced).
    """

    def __init__(
        self,
        document: dict[str, Any],
        *,
        source: str,
        client_name: str | None = None,
        base_url: str | None = None,
        models_only: bool = False,
    ) -> None:
        self.doc = document
        self.source = source
        if "swagger" in document:
            raise GenerationError(
                f"{source}: Swagger {document['swagger']} is not supported; convert it to "
                "OpenAPI 3 (e.g. with swagger2openapi)"
            )
        version = str(document.get("openapi", ""))
        self.openapi = bool(version)
        if self.openapi and not version.startswith("3."):
            raise GenerationError(f"{source}: OpenAPI {version} is not supported (3.x only)")
        info = document.get("info") or {}
        self.title = str(info.get("title") or document.get("title") or "API")
        self.version = str(info.get("version") or "")
        self.models_only = models_only or not self.openapi
        self.client_name = client_name or f"{class_name(self.title)}Client"
        servers = document.get("servers") or [{}]
        self.base_url = base_url or str(servers[0].get("url") or "http://localhost")
        self._names: dict[str, str] = {}  # "#/components/schemas/Pet" -> "Pet"
        self._used: set[str] = {self.client_name}
        self._models = self._collect_models()
        self._check_refs(document, "#")
        self._hoisted: list[_Model] = []
        self._late: list[_Model] = []  # inline objects of operations, emitted at the end

    # -- naming and references --------------------------------------------------------

    def _unique(self, name: str) -> str:
        candidate, n = name, 2
        while candidate in self._used:
            candidate, n = f"{name}{n}", n + 1
        self._used.add(candidate)
        return candidate

    def _collect_models(self) -> list[_Model]:
        """Every named schema, ordered so that a base class comes before its subclasses."""
        found: list[_Model] = []
        doc = self.doc
        if self.openapi:
            tables = [("#/components/schemas/", (doc.get("components") or {}).get("schemas"))]
        else:
            tables = [("#/$defs/", doc.get("$defs")), ("#/definitions/", doc.get("definitions"))]
            root = {k: v for k, v in doc.items() if k not in ("$defs", "definitions")}
            if any(k in root for k in ("type", "properties", "allOf", "oneOf", "anyOf", "enum")):
                name = self._unique(class_name(str(doc.get("title") or "Root")))
                self._names["#"] = name
                found.append(_Model(name, root, "#"))
        for prefix, table in tables:
            for key, schema in (table or {}).items():
                pointer = prefix + _escape(key)
                self._names[pointer] = self._unique(class_name(key))
                if not isinstance(schema, dict):
                    raise GenerationError(f"{self.source}: {pointer} is not a schema object")
                found.append(_Model(self._names[pointer], schema, pointer))
        by_name = {m.name: m for m in found}
        ordered: list[_Model] = []
        state: dict[str, int] = {}

        def visit(model: _Model, chain: list[str]) -> None:
            if state.get(model.name) == 2:
                return
            if state.get(model.name) == 1:
                raise GenerationError(
                    f"{self.source}: allOf cycle: {' -> '.join([*chain, model.name])}"
                )
            state[model.name] = 1
            for part in model.schema.get("allOf") or []:
                target = self._names.get(part.get("$ref", "")) if isinstance(part, dict) else None
                if target is not None and target in by_name:
                    visit(by_name[target], [*chain, model.name])
            state[model.name] = 2
            ordered.append(model)

        for model in found:
            visit(model, [])
        return ordered

    def _check_refs(self, node: Any, where: str) -> None:
        """Fail early, naming the location, on any ``$ref`` that does not resolve."""
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                self._resolve(ref, where)
            for key, value in node.items():
                self._check_refs(value, f"{where}/{_escape(str(key))}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._check_refs(value, f"{where}/{i}")

    def _resolve(self, ref: str, where: str) -> Any:
        if not ref.startswith("#"):
            raise GenerationError(
                f"{self.source}: external $ref {ref!r} at {where} is not supported"
            )
        node: Any = self.doc
        for raw in ref[1:].split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise GenerationError(f"{self.source}: $ref {ref!r} at {where} does not resolve")
        return node

    def _deref(self, node: Any, where: str) -> Any:
        """Follow ``$ref`` chains of non-schema objects (parameters, bodies, responses)."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
            node = self._resolve(node["$ref"], where)
            seen += 1
        return node

    # -- types --------------------------------------------------------------------------

    def type_of(self, schema: Any, context: str) -> str:
        """The Python type of ``schema``; inline objects become models named ``context``."""
        if not isinstance(schema, dict) or schema is True:
            return "Any"
        text = self._type(schema, context)
        if schema.get("nullable") is True and text != "Any":
            text = _union([*text.split(" | "), "None"])
        return text

    def _type(self, schema: dict[str, Any], context: str) -> str:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in self._names:
                return self._names[ref]
            return self.type_of(self._resolve(ref, context), context)
        if "const" in schema and _literal(schema["const"]) is not None:
            return f"Literal[{_literal(schema['const'])}]"
        if isinstance(schema.get("enum"), list):
            values = [_literal(v) for v in schema["enum"]]
            if values and all(v is not None for v in values):
                literals = [v for v in dict.fromkeys(values) if v is not None and v != "None"]
                text = f"Literal[{', '.join(literals)}]" if literals else "None"
                return _union([text, "None"]) if "None" in values else text
        for key in ("oneOf", "anyOf"):
            if isinstance(schema.get(key), list):
                parts = [
                    self.type_of(s, f"{context}Option{i + 1}") for i, s in enumerate(schema[key])
                ]
                return _union(parts)
        if isinstance(schema.get("allOf"), list):
            parts_all = schema["allOf"]
            if len(parts_all) == 1 and not schema.get("properties"):
                return self.type_of(parts_all[0], context)
            return self._hoist(context, schema)
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union([self._type({**schema, "type": k}, context) for k in kind])
        if kind == "string":
            return "str"
        if kind == "integer":
            return "int"
        if kind == "number":
            return "float"
        if kind == "boolean":
            return "bool"
        if kind == "null":
            return "None"
        if kind == "array":
            items = schema.get("items")
            return f"list[{self.type_of(items, f'{context}Item')}]" if items else "list[Any]"
        if kind == "object" or "properties" in schema:
            if schema.get("properties"):
                return self._hoist(context, schema)
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                return f"dict[str, {self.type_of(extra, f'{context}Value')}]"
            return "dict[str, Any]"
        return "Any"

    def _hoist(self, context: str, schema: dict[str, Any]) -> str:
        """Make an inline object schema a model of its own; return its name."""
        name = self._unique(class_name(context))
        self._hoisted.append(_Model(name, schema, context))
        return name

    # -- models -------------------------------------------------------------------------

    def _object_parts(
        self, model: _Model
    ) -> tuple[list[str], dict[str, Any], set[str], str | None] | None:
        """Bases, properties, required names and description of an object model.

        None when the schema is not an object (it becomes a type alias).
        """
        schema = model.schema
        bases: list[str] = []
        props: dict[str, Any] = {}
        required: set[str] = set()
        members = [schema, *(schema.get("allOf") or [])] if "allOf" in schema else [schema]
        for member in members:
            if not isinstance(member, dict):
                return None
            ref = member.get("$ref")
            if member is not schema and isinstance(ref, str):
                target = self._names.get(ref)
                resolved = self._resolve(ref, model.where)
                if target is None or not self._is_object(resolved):
                    return None
                bases.append(target)
                continue
            if member is not schema and not self._is_object(member):
                return None
            props.update(member.get("properties") or {})
            required.update(r for r in member.get("required") or [] if isinstance(r, str))
        if not bases and not self._is_object(schema):
            return None
        return bases, props, required, schema.get("description")

    @staticmethod
    def _is_object(schema: Any) -> bool:
        if not isinstance(schema, dict):
            return False
        if "allOf" in schema:
            return True
        if schema.get("type") == "object" and not schema.get("additionalProperties"):
            return True
        return "properties" in schema and schema.get("type") in (None, "object")

    def _model_units(self, model: _Model) -> list[Unit]:
        """The model's own unit, preceded by the units of objects defined inline in it."""
        self._hoisted = []
        lines = self._model_lines(model)
        units: list[Unit] = []
        while self._hoisted:  # inline objects first: aliases and bases need them defined
            pending, self._hoisted = self._hoisted, []
            for inner in pending:
                units.append(Unit(inner.name, self._model_lines(inner)))
        units.append(Unit(model.name, lines))
        return units

    def _model_lines(self, model: _Model) -> list[str]:
        parts = self._object_parts(model)
        if parts is None:
            alias = self.type_of(model.schema, f"{model.name}Value")
            doc = model.schema.get("description")
            lines = [f"#: {' '.join(str(doc).split())}"[:_WIDTH]] if doc else []
            # quoted (a forward reference) only when it names a model, maybe defined later
            names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'[^']*'", "", alias)))
            value = _quote(alias) if names & self._used else alias
            return ["", "", *lines, f"{model.name}: TypeAlias = {value}"]
        bases, props, required, description = parts
        fields: list[tuple[str, str, str | None]] = []
        for prop, schema in props.items():
            typ = self.type_of(schema, f"{model.name}{class_name(prop)}")
            if prop not in required:
                typ = f"NotRequired[{typ}]"
            doc = schema.get("description") if isinstance(schema, dict) else None
            fields.append((prop, typ, doc))
        fallback = f"The {model.where.rsplit('/', 1)[-1] or model.name} object."
        functional = any(not p.isidentifier() or keyword.iskeyword(p) for p, _, _ in fields)
        if functional:
            # keys that are not identifiers: the functional syntax (bases are flattened)
            for base in reversed(bases):
                fields = self._base_fields(base) + fields
            out = ["", "", f"{model.name} = TypedDict(", f'    "{model.name}",', "    {"]
            for prop, typ, _doc in fields:
                out.append(f"        {json.dumps(prop)}: {self._quoted(typ)},")
            out += ["    },", ")"]
            out += [f"{model.name}.__doc__ = {json.dumps(self._plain(description, fallback))}"]
            return out
        out = ["", "", f"class {model.name}({', '.join(bases) or 'TypedDict'}):"]
        out += _docstring(description, fallback, "    ")
        if fields:
            out.append("")
        for prop, typ, doc in fields:
            if doc:
                out.append(f"    #: {' '.join(str(doc).split())}"[:_WIDTH])
            out.append(f"    {prop}: {typ}")
        return out

    def _base_fields(self, base: str) -> list[tuple[str, str, str | None]]:
        for model in self._models:
            if model.name == base:
                parts = self._object_parts(model)
                if parts is None:
                    return []
                bases, props, required, _ = parts
                own = []
                for prop, schema in props.items():
                    typ = self.type_of(schema, f"{model.name}{class_name(prop)}")
                    own.append((prop, typ if prop in required else f"NotRequired[{typ}]", None))
                inherited = [f for b in bases for f in self._base_fields(b)]
                return inherited + own
        return []

    @staticmethod
    def _quoted(typ: str) -> str:
        """A type for the functional TypedDict syntax: evaluated at run time, so quoted."""
        if typ.startswith("NotRequired[") and typ.endswith("]"):
            return f"NotRequired[{_quote(typ[12:-1])}]"
        return _quote(typ)

    @staticmethod
    def _plain(text: str | None, fallback: str) -> str:
        body = " ".join((text or "").split("\n\n")[0].split()) or fallback
        return body if body.endswith(".") else body + "."

    # -- client -------------------------------------------------------------------------

    def _operations(self) -> list[tuple[str, str, dict[str, Any], list[Any]]]:
        """``(method, path, operation, path-level parameters)`` in document order."""
        found = []
        for path, item in (self.doc.get("paths") or {}).items():
            item = self._deref(item, f"#/paths/{_escape(path)}")
            if not isinstance(item, dict):
                continue
            shared = item.get("parameters") or []
            for method in _HTTP_METHODS:
                operation = item.get(method)
                if isinstance(operation, dict):
                    found.append((method, path, operation, shared))
        return found

    def _client_head(self) -> list[str]:
        title = f"{self.title} {self.version}".strip()
        lines = ["", "", "def _q(value: Any) -> str:"]
        lines += ['    """A path parameter, percent-encoded."""']
        lines += ['    return urllib.parse.quote(str(value), safe="")']
        lines += ["", "", f"class {self.client_name}:"]
        lines += _docstring(f"Client of {title}: one method per operation", "", "    ")
        lines += [
            "",
            "    def __init__(",
            "        self,",
            f"        base_url: str = {json.dumps(self.base_url)},",
            "        *,",
            "        headers: Mapping[str, str] | None = None,",
            "        timeout: float = 30.0,",
            "    ) -> None:",
            '        self.base_url = base_url.rstrip("/")',
            "        self.headers = dict(headers or {})",
            "        self.timeout = timeout",
            "",
            "    def _request(",
            "        self,",
            "        method: str,",
            "        path: str,",
            "        *,",
            "        query: Mapping[str, Any] | None = None,",
            "        headers: Mapping[str, Any] | None = None,",
            "        body: Any = None,",
            '        content_type: str = "application/json",',
            "    ) -> Any:",
            '        """Send one request; return the decoded JSON response (None if empty)."""',
            "        url = self.base_url + path",
            "        params = {k: v for k, v in (query or {}).items() if v is not None}",
            "        if params:",
            '            url += "?" + urllib.parse.urlencode(params, doseq=True)',
            '        sent = {"Accept": "application/json", **self.headers}',
            "        sent.update({k: str(v) for k, v in (headers or {}).items() if v is not None})",
            "        data = None",
            "        if body is not None:",
            '            data = json.dumps(body).encode("utf-8")',
            '            sent["Content-Type"] = content_type',
            "        request = urllib.request.Request(url, data=data, headers=sent, method=method)",
            "        with urllib.request.urlopen(request, timeout=self.timeout) as response:",
            "            payload = response.read()",
            "        return json.loads(payload) if payload else None",
        ]
        return lines

    @staticmethod
    def _json_schema(content: Any) -> tuple[str | None, Any]:
        """(the JSON media type, its schema) of a ``content`` map; (None, None) if none."""
        if not isinstance(content, dict):
            return None, None
        for media, entry in content.items():
            if media == "application/json" or media.endswith(("/json", "+json")):
                return media, (entry or {}).get("schema") if isinstance(entry, dict) else None
        return None, None

    def _operation_lines(
        self, method: str, path: str, op: dict[str, Any], shared: list[Any], name: str
    ) -> list[str]:
        where = f"#/paths/{_escape(path)}/{method}"
        context = class_name(name)
        params: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [*shared, *(op.get("parameters") or [])]:
            param = self._deref(raw, where)
            if isinstance(param, dict) and "name" in param and "in" in param:
                params[(param["in"], param["name"])] = param  # operation-level overrides
        positional: list[str] = []
        keywords: list[str] = []
        taken: set[str] = set()
        query: list[tuple[str, str]] = []
        headers: list[tuple[str, str]] = []
        path_expr = path
        for (where_in, raw_name), param in params.items():
            if where_in == "cookie":
                continue
            arg = snake_name(raw_name)
            while arg in taken:
                arg += "_"
            taken.add(arg)
            typ = self.type_of(param.get("schema"), f"{context}{class_name(raw_name)}")
            if where_in == "path":
                positional.append(f"{arg}: {typ}")
                path_expr = path_expr.replace("{" + raw_name + "}", "{_q(" + arg + ")}")
            elif param.get("required"):
                keywords.append(f"{arg}: {typ}")
            else:
                keywords.append(f"{arg}: {_union([*typ.split(' | '), 'None'])} = None")
            if where_in == "query":
                query.append((raw_name, arg))
            elif where_in == "header":
                headers.append((raw_name, arg))
        body_arg = None
        media = None
        body = self._deref(op.get("requestBody"), where)
        if isinstance(body, dict):
            media, schema = self._json_schema(body.get("content"))
            if media:
                typ = self.type_of(schema, f"{context}Body") if schema else "Any"
                body_arg = "body"
                if body.get("required"):
                    positional.append(f"body: {typ}")
                else:
                    keywords.append(f"body: {_union([*typ.split(' | '), 'None'])} = None")
        returns = self._return_type(op, where, context)
        args = ["self", *positional]
        if keywords:
            args += ["*", *keywords]
        signature = f"    def {name}({', '.join(args)}) -> {returns}:"
        if len(signature) > _WIDTH:
            signature_lines = [f"    def {name}("]
            signature_lines += [f"        {a}," for a in args]
            signature_lines.append(f"    ) -> {returns}:")
        else:
            signature_lines = [signature]
        summary = op.get("summary") or op.get("description")
        lines = ["", *signature_lines]
        doc = _docstring(summary, f"{method.upper()} {path}", "        ")
        if summary and len(doc) == 1:
            doc = [doc[0][:-3], "", f"        {method.upper()} {path}", '        """']
        lines += doc
        call_args = [
            json.dumps(method.upper()),
            f'f"{path_expr}"' if "{_q(" in path_expr else json.dumps(path_expr),
        ]
        if query:
            call_args.append("query={" + ", ".join(f"{json.dumps(q)}: {a}" for q, a in query) + "}")
        if headers:
            call_args.append(
                "headers={" + ", ".join(f"{json.dumps(h)}: {a}" for h, a in headers) + "}"
            )
        if body_arg:
            call_args.append(f"body={body_arg}")
            if media != "application/json":
                call_args.append(f"content_type={json.dumps(media)}")
        call = f"self._request({', '.join(call_args)})"
        if returns == "None":
            statement = f"        {call}"
        else:
            statement = f"        return cast({_quote(returns)}, {call})"
        if len(statement) <= _WIDTH:
            lines.append(statement)
        elif returns == "None":
            lines += [
                "        self._request(",
                *[f"            {a}," for a in call_args],
                "        )",
            ]
        else:
            lines += ["        return cast(", f"            {_quote(returns)},"]
            lines += ["            self._request(", *[f"                {a}," for a in call_args]]
            lines += ["            ),", "        )"]
        return lines

    def _return_type(self, op: dict[str, Any], where: str, context: str) -> str:
        responses = op.get("responses") or {}
        codes = sorted(str(c) for c in responses if str(c).startswith("2"))
        empty = False
        for code in codes:
            response = self._deref(responses[code], f"{where}/responses/{code}")
            if not isinstance(response, dict):
                continue
            media, schema = self._json_schema(response.get("content"))
            if media:
                return self.type_of(schema, f"{context}Response") if schema else "Any"
            if not response.get("content"):
                empty = True
        return "None" if empty else "Any"

    # -- the whole module ---------------------------------------------------------------

    def count_units(self) -> int:
        """How many units :meth:`units` yields at least (for progress totals)."""
        operations = 0 if self.models_only else len(self._operations())
        return 1 + len(self._models) + (0 if self.models_only else 1 + operations)

    def units(self) -> Iterator[Unit]:
        """The module, unit by unit: header, models, then the client and its methods."""
        title = f"{self.title} {self.version}".strip()
        what = "Types" if self.models_only else "Typed client"
        header = [f'"""{what} for {title}.', ""]
        header += [f"Generated by headwater-codegen from {self.source}; do not edit by hand."]
        header += ['"""', "", "from __future__ import annotations", ""]
        if not self.models_only:
            header += ["import json", "import urllib.parse", "import urllib.request"]
            header += ["from collections.abc import Mapping"]
        header.append(
            "from typing import Any, Literal, NotRequired, TypeAlias, TypedDict, cast  # noqa: F401"
        )
        yield Unit("header", header)
        for model in self._models:
            yield from self._model_units(model)
        if self.models_only:
            return
        yield Unit(self.client_name, self._client_head())
        names: set[str] = set()
        for method, path, op, shared in self._operations():
            base = op.get("operationId") or f"{method} {path}"
            name = snake_name(str(base))
            while name in names or name in ("_request", "base_url", "headers", "timeout"):
                name += "_"
            names.add(name)
            self._hoisted = []
            lines = self._operation_lines(method, path, op, shared, name)
            self._late += self._hoisted  # inline objects of parameters, bodies, responses
            yield Unit(name, lines)
        # module-level models after the class: fine, annotations are evaluated lazily
        for model in self._late:
            yield from self._model_units(model)
