"""Tests of headwater-codegen, with the pytest fixtures headwater ships for plugin authors.

The generated code is compiled, imported, type-checked with ``mypy --strict`` (when mypy
is installed) and used against a real local HTTP server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anyio
import headwater
import pytest
from headwater.core.context import RunIdentity, StreamContext
from headwater.testing import RegisterPlugin, run_pipeline

import headwater_codegen

DATA = Path(__file__).parent / "data"
PETSTORE = DATA / "petstore.json"
PERSON = DATA / "person.schema.json"


@pytest.fixture
def plugin(register_plugin: RegisterPlugin) -> None:
    register_plugin(headwater_codegen)


def generate(path: Path, **params: Any) -> list[str]:
    pipeline = headwater.Pipeline("gen").source("codegen.client", path=str(path), **params)
    return list(run_pipeline(pipeline.sink("collect")).output)


def load(lines: list[str], name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile("\n".join(lines) + "\n", f"<{name}>", "exec"), namespace)
    return namespace


def test_components_are_registered(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(headwater_codegen)
    assert info.components == ["action:codegen.client"]


@pytest.mark.usefixtures("plugin")
def test_openapi_models_and_client_signatures() -> None:
    lines = generate(PETSTORE)
    source = "\n".join(lines)
    assert lines[0] == '"""Typed client for Swagger Petstore 1.0.0.'
    assert "Kind: TypeAlias = Literal['cat', 'dog', 'bird']" in lines
    assert "class Pet(NewPet):" in lines  # allOf: inheritance
    assert '        "vaccinated-on": NotRequired["list[str]"],' in lines  # not an identifier
    assert "    def show_pet_by_id(self, pet_id: str) -> Pet:" in lines
    assert "    def create_pets(self, body: NewPet) -> None:" in lines
    assert "        class_: Kind | None = None," in lines  # a keyword as parameter name
    module = load(lines, "petstore_client")
    pet = module["Pet"]
    assert pet.__required_keys__ == {"id", "name"}
    assert {"tag", "owner", "vaccinated-on"} <= pet.__optional_keys__
    assert module["SwaggerPetstoreClient"]().base_url == "http://petstore.example.com/v1"
    assert "def delete_pets_pet_id(self, pet_id: str) -> None:" in source


@pytest.mark.usefixtures("plugin")
def test_json_schema_models() -> None:
    lines = generate(PERSON)
    assert lines[0] == '"""Types for person record.'
    module = load(lines, "person")
    record = module["PersonRecord"]
    assert record.__required_keys__ == {"id", "name"}
    assert "class" in record.__optional_keys__
    assert module["Address"].__required_keys__ == {"street"}
    assert module["AddressGeo"].__required_keys__ == {"lat", "lon"}
    assert "        \"status\": NotRequired[\"Literal['active', 'retired'] | None\"]," in lines
    assert '        "manager": NotRequired["PersonRecord"],' in lines  # a self-reference


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize("document", [PETSTORE, PERSON], ids=["openapi", "json-schema"])
def test_generated_code_passes_mypy_strict(document: Path, tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    target = tmp_path / "generated.py"
    target.write_text("\n".join(generate(document)) + "\n", encoding="utf-8")
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(target)]
    )
    assert status == 0, out + err


class _Recorder(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []
    pets: ClassVar[list[dict[str, Any]]] = [
        {"id": 1, "name": "Rex", "kind": "dog"},
        {"id": 2, "name": "Tom", "kind": "cat"},
    ]

    def _reply(self, status: int, payload: Any = None) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append(
            {
                "method": self.command,
                "path": self.path,
                "body": body,
                "content_type": self.headers.get("Content-Type"),
                "request_id": self.headers.get("X-Request-ID"),
            }
        )
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/pets/"):
            self._reply(200, self.pets[0])
        else:
            self._reply(200, self.pets)

    def do_POST(self) -> None:
        self._reply(201)

    def do_PATCH(self) -> None:
        self._reply(200, {"id": 1, "name": "Max"})

    def do_DELETE(self) -> None:
        self._reply(204)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.usefixtures("plugin")
def test_generated_client_talks_to_a_server(server: str) -> None:
    module = load(generate(PETSTORE), "petstore_client")
    client = module["SwaggerPetstoreClient"](server)
    assert client.list_pets(limit=2, class_="dog", x_request_id="r-1") == _Recorder.pets
    assert client.show_pet_by_id("a b/7") == _Recorder.pets[0]
    assert client.create_pets({"name": "Kit", "kind": "cat"}) is None
    assert client.rename_pet(1, body={"name": "Max"}) == {"id": 1, "name": "Max"}
    assert client.delete_pets_pet_id(1) is None
    calls = _Recorder.calls
    assert calls[0]["path"] == "/v1/pets?limit=2&class=dog"
    assert calls[0]["request_id"] == "r-1"
    assert calls[1]["path"] == "/v1/pets/a%20b%2F7"  # path parameters are percent-encoded
    assert calls[2]["body"] == {"name": "Kit", "kind": "cat"}
    assert calls[3]["content_type"] == "application/merge-patch+json"
    assert [c["method"] for c in calls] == ["GET", "GET", "POST", "PATCH", "DELETE"]


@pytest.mark.usefixtures("plugin")
def test_yaml_documents(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "petstore.yaml"
    path.write_text(
        yaml.safe_dump(json.loads(PETSTORE.read_text()), sort_keys=False), encoding="utf-8"
    )
    from_yaml = generate(path)
    from_json = generate(PETSTORE)
    assert from_yaml[2].endswith("petstore.yaml; do not edit by hand.")
    assert from_yaml[3:] == from_json[3:]


@pytest.mark.usefixtures("plugin")
def test_start_at_resumes_the_stream() -> None:
    full = generate(PETSTORE)
    assert generate(PETSTORE, start_at=40) == full[40:]
    assert generate(PETSTORE, start_at=len(full) + 5) == []


def test_lines_stream_unit_by_unit() -> None:
    """Progress for a unit arrives after its lines and before the next unit's lines."""
    lines: list[str] = []
    progress: list[tuple[int, float, float | None, str | None]] = []

    def emit(event: Any) -> None:
        if isinstance(event, headwater.Progress):
            progress.append((len(lines), event.done, event.total, event.message))

    ctx = StreamContext(RunIdentity("t", "r"), "sources.gen", _emit=emit)
    params = headwater_codegen.ClientParams(path=str(PETSTORE))

    async def main() -> None:
        async for line in headwater_codegen.client.obj(params, ctx):
            lines.append(line)

    anyio.run(main)
    names = [message for _, _, _, message in progress]
    assert names[:3] == ["header", "Kind", "NewPetOwner"]
    assert "show_pet_by_id" in names
    assert [done for _, done, _, _ in progress] == list(range(1, len(progress) + 1))
    assert progress[-1][2] == len(progress)  # the total was right
    lines_seen = [n for n, _, _, _ in progress]
    assert lines_seen == sorted(lines_seen)
    assert 0 < lines_seen[0] < lines_seen[-1] == len(lines)


@pytest.mark.usefixtures("plugin")
def test_cancel_midway_with_take() -> None:
    pipeline = (
        headwater.Pipeline("head")
        .source("codegen.client", path=str(PETSTORE))
        .step("take", count=3)
        .sink("collect")
    )
    assert len(run_pipeline(pipeline).output) == 3


UNRESOLVED = {
    "openapi": "3.1.0",
    "paths": {
        "/x": {
            "get": {
                "responses": {
                    "200": {
                        "description": "x",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}
                        },
                    }
                }
            }
        }
    },
}
CYCLE = {
    "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}
}


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            UNRESOLVED,
            "$ref '#/components/schemas/Nope' at "
            "#/paths/~1x/get/responses/200/content/application~1json/schema does not resolve",
        ),
        ({"swagger": "2.0"}, "Swagger 2.0 is not supported"),
        ({"openapi": "2.5"}, "OpenAPI 2.5 is not supported"),
        ({"$defs": {"a": {"$ref": "other.json#/b"}}}, "external $ref 'other.json#/b'"),
        (CYCLE, "allOf cycle: A -> B -> A"),
    ],
    ids=["unresolved-ref", "swagger", "openapi-2", "external-ref", "allof-cycle"],
)
def test_broken_documents_fail_before_any_line(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    pipeline = headwater.Pipeline("bad").source("codegen.client", path=str(path)).sink("collect")
    result = run_pipeline(pipeline, raise_on_error=False)
    assert result.state == "failed"
    assert message in str(result.errors[0])
    assert result.summary["items_in"] == 0  # no half module


@pytest.mark.usefixtures("plugin")
def test_unreadable_documents(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"openapi": "3.0.0",\n  "paths": {,}}', encoding="utf-8")
    invalid = "bad.json is not valid JSON: Expecting property name enclosed in double quotes"
    for path, message in [
        (bad, f"{invalid} at line 2, column 13"),
        (tmp_path / "missing.json", "no such schema document"),
    ]:
        pipeline = headwater.Pipeline("bad").source("codegen.client", path=str(path))
        result = run_pipeline(pipeline.sink("collect"), raise_on_error=False)
        assert message in str(result.errors[0])
