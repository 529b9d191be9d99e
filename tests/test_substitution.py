"""``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in pipeline, server and jobs files,
and the secrets they make: recorded per engine, masked wherever shown."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import headwater
from headwater.core.errors import InvalidFileError
from headwater.core.jobs import load_jobs, validate_jobs
from headwater.core.secrets import MASK, Secrets, mask_url_credentials
from headwater.core.substitution import MAX_FILE_BYTES, Substitution, SubstitutionError
from headwater.core.yamlfile import YamlFileError, parse_yaml, read_yaml
from headwater.server.config import load_server_config
from headwater.types import Register

PIPE = """\
name: p
sources:
  n: {{action: iterable, params: {{items: [{items}]}}}}
sinks: [{{sink: collect}}]
"""


def items_of(tmp_path: Path, items: str, env: dict[str, str] | None = None) -> list[object]:
    """The ``items`` param of a pipeline file whose items are ``items`` (YAML text)."""
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.format(items=items))
    spec = headwater.load_pipeline(path, environ=env or {})
    return list(spec.sources["n"].params["items"])


# -- the forms ----------------------------------------------------------------------------


def test_variables_defaults_files_and_escapes(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("from-a-file\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "crlf.txt").write_bytes(b"two\r\nlines\r\n")
    env = {"HOST": "db.example", "EMPTY": ""}
    got = items_of(
        tmp_path,
        '"${HOST}", "x-${HOST}-y", "${MISSING:-fallback}", "${EMPTY:-was empty}", "${EMPTY}", '
        '"${file:key.txt}", "${file:sub/crlf.txt}", "$${HOST}", "$HOST", "a $ b", "${HOST:-}"',
        env,
    )
    assert got == [
        "db.example",
        "x-db.example-y",
        "fallback",
        "was empty",
        "",
        "from-a-file",
        "two\r\nlines",
        "${HOST}",
        "$HOST",
        "a $ b",
        "db.example",
    ]


def test_a_missing_variable_names_the_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.format(items='"ok", "${DB_PASSWORD}"'))
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.load_pipeline(path, environ={})
    assert str(info.value).endswith(
        f"\n  {path}:3: sources.n.params.items[1]: environment variable DB_PASSWORD is not set "
        "(write ${DB_PASSWORD:-default} for a default)"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${oops", "unclosed ${oops: write ${NAME}, ${NAME:-default} or ${file:PATH}"),
        ("${1X}", "cannot substitute ${1X}: write ${NAME}, ${NAME:-default} or ${file:PATH}"),
        ("${A B}", "cannot substitute ${A B}"),
        ("${A:-${B}}", "the default of ${A:-...} holds a ${: substitutions do not nest"),
        ("${file:}", "${file:PATH} needs a path"),
        ("${file:nope.txt}", "cannot read ${file:nope.txt}: No such file or directory"),
        ("${file:.}", "cannot read ${file:.}: not a regular file"),
    ],
)
def test_malformed_substitutions_are_errors(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(SubstitutionError) as info:
        Substitution(tmp_path, environ={}).apply(value)
    assert str(info.value).startswith(problem)


def test_files_are_bounded_and_never_block(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(SubstitutionError, match=r"is larger than 65,536 bytes"):
        Substitution(tmp_path).apply("${file:big.txt}")
    big.write_bytes(b"x" * MAX_FILE_BYTES)
    assert len(Substitution(tmp_path).apply("${file:big.txt}")) == MAX_FILE_BYTES
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: a blocking read would hang the test
    with pytest.raises(SubstitutionError, match="not a regular file"):
        Substitution(tmp_path).apply("${file:fifo}")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(SubstitutionError, match="not UTF-8 text"):
        Substitution(tmp_path).apply("${file:bin.txt}")
    with pytest.raises(SubstitutionError, match="substitutions insert more than 1,048,576"):
        Substitution(tmp_path).apply("${file:big.txt}" * 17)


# -- after parsing: values only, never structure -------------------------------------------


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40))
def test_a_substituted_value_is_one_string_whatever_it_holds(value: str) -> None:
    text = 'a: "${V}"\nb: [x, "${V}"]\n"${V}": key\n'
    data = parse_yaml(text, substitution=Substitution(".", environ={"V": value}))
    assert data == {"a": value, "b": ["x", value], "${V}": "key"}  # keys stay as written


def test_yaml_in_a_value_injects_nothing(tmp_path: Path) -> None:
    evil = "x\n  - {sink: jsonl, params: {path: /tmp/stolen}}\nextra: &a [*a]"
    got = items_of(tmp_path, '"${EVIL}"', {"EVIL": evil})
    assert got == [evil]


def test_non_string_scalars_and_tags_are_not_substituted() -> None:
    data = parse_yaml(
        "a: !!binary aGk=\nb: 12\nc: ${X}\n", substitution=Substitution(".", environ={"X": "9"})
    )
    assert data == {"a": b"hi", "b": 12, "c": "9"}
    assert parse_yaml("c: ${X}\n") == {"c": "${X}"}  # no substitution asked for


def test_json_files_get_the_same_substitution_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {
                "name": "p",
                "sources": {"n": {"action": "range", "params": {"stop": "${STOP}"}}},
                "sinks": [{"sink": "collect"}],
            }
        )
    )
    spec = headwater.load_pipeline(path, environ={"STOP": "3"})
    assert spec.sources["n"].params == {"stop": "3"}
    path.write_text('{"name": "p", "n": ' + "[" * 150 + "]" * 150 + "}")
    with pytest.raises(headwater.PipelineValidationError, match=r"p\.json:1: n\[0\]"):
        headwater.load_pipeline(path)
    path.write_text('{"name": "p", "n": ' + "9" * 400 + "}")
    with pytest.raises(headwater.PipelineValidationError, match="integer has 400 digits"):
        headwater.load_pipeline(path)


def test_overrides_are_never_substituted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.format(items='"${A}"'))
    spec = headwater.load_pipeline(
        path, {"sources.n.params.items": ["${A}"]}, environ={"A": "file-value"}
    )
    assert spec.sources["n"].params["items"] == ["${A}"]


# -- server and jobs files -----------------------------------------------------------------


def test_server_and_jobs_files_substitute_and_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HW_TEST_PRINCIPAL", "principal-from-env")
    (tmp_path / "tok.txt").write_text("pipeline-file-secret\n")
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "tok.txt").write_text("beside-the-pipeline\n")
    (tmp_path / "pipes" / "n.yaml").write_text(PIPE.format(items='"${file:tok.txt}"'))
    (tmp_path / "serve.yaml").write_text(
        "port: 0\n"
        "auth: {tokens: {t0ken-abc: '${HW_TEST_PRINCIPAL}'}}\n"
        "pipelines:\n"
        "  n: pipes/n.yaml\n"
        "  inline: {name: inline, sources: {s: {action: iterable, params: "
        "{items: ['${file:tok.txt}']}}}, sinks: [{sink: collect}]}\n"
    )
    secrets = Secrets()
    config = load_server_config(tmp_path / "serve.yaml", secrets=secrets)
    assert config.auth.tokens["t0ken-abc"] == "principal-from-env"
    named = config.named_pipelines(tmp_path)
    assert named["n"].data["sources"]["n"]["params"]["items"] == ["beside-the-pipeline"]
    assert named["inline"].data["sources"]["s"]["params"]["items"] == ["pipeline-file-secret"]
    for value in ("principal-from-env", "pipeline-file-secret", "beside-the-pipeline"):
        assert value in secrets

    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  a: {pipeline: pipes/n.yaml, priority: '${HW_TEST_PRIORITY:-3}'}\n"
    )
    jobs_secrets = Secrets()
    jobs = load_jobs(tmp_path / "jobs.yaml", secrets=jobs_secrets)
    assert jobs.jobs["a"].priority == 3
    assert len(jobs_secrets) == 0  # a default is in the file for all to read
    validate_jobs(tmp_path / "jobs.yaml", secrets=jobs_secrets)
    assert "beside-the-pipeline" in jobs_secrets


def test_substitution_errors_in_server_and_jobs_files_name_file_line_and_path(
    tmp_path: Path,
) -> None:
    (tmp_path / "serve.yaml").write_text("port: 0\nhost: '${NO_SUCH_HOST_VAR}'\n")
    with pytest.raises(InvalidFileError) as info:
        load_server_config(tmp_path / "serve.yaml")
    assert f"{tmp_path / 'serve.yaml'}:2: host: environment variable NO_SUCH_HOST_VAR" in str(
        info.value
    )
    (tmp_path / "jobs.yaml").write_text("jobs:\n  a:\n    pipeline: '${file:none.yaml}'\n")
    with pytest.raises(InvalidFileError) as info:
        load_jobs(tmp_path / "jobs.yaml")
    assert "jobs.yaml:3: jobs.a.pipeline: cannot read ${file:none.yaml}" in str(info.value)


# -- secrets -------------------------------------------------------------------------------


def test_masking_text_data_and_urls() -> None:
    secrets = Secrets(["hunter2-pass", "abc", "tok-123456"])
    assert len(secrets) == 2  # shorter than 4 characters: not a secret worth masking
    assert secrets.mask("login hunter2-pass, tok-123456!") == f"login {MASK}, {MASK}!"
    assert secrets.mask("abc") == "abc"
    data = {"a": ["x", {"tok-123456": "hunter2-pass"}], "n": 1, "t": ("ok",)}
    assert secrets.mask_data(data) == {"a": ["x", {MASK: MASK}], "n": 1, "t": ("ok",)}
    untouched = {"a": [1, "plain"]}
    assert secrets.mask_data(untouched) is untouched
    assert mask_url_credentials("redis://user:pa55@host:6379/0 and amqp://:pw@h") == (
        f"redis://user:{MASK}@host:6379/0 and amqp://:{MASK}@h"
    )
    assert mask_url_credentials("https://h/x?a=1&token=abc&Password=s3&b=2") == (
        f"https://h/x?a=1&token={MASK}&Password={MASK}&b=2"
    )
    assert mask_url_credentials("ssh://git@github.com/x, a=b") == "ssh://git@github.com/x, a=b"
    assert "hunter2-pass" not in repr(secrets)


def test_the_logging_filter_masks_messages_arguments_and_tracebacks() -> None:
    secrets = Secrets(["s3cr3t-value"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(secrets.logging_filter())
    log = logging.getLogger("test_substitution.masking")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting with %s to %s", "s3cr3t-value", "redis://u:pw@h")
        try:
            raise ValueError("bad s3cr3t-value")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cr3t-value" not in text
    assert f"connecting with {MASK} to redis://u:{MASK}@h" in text
    assert f"ValueError: bad {MASK}" in text


@pytest.mark.anyio
async def test_engines_mask_only_their_own_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HW_TEST_ISOLATED", "only-engine-a-knows")
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nsources:\n  n: {action: file.lines, params: "
        "{path: 'missing-${HW_TEST_ISOLATED}.txt'}}\nsinks: [{sink: collect}]\n"
    )
    a, b = headwater.Engine(), headwater.Engine()
    result = await a.run(path, raise_on_error=False)
    assert "only-engine-a-knows" in a.services.secrets
    assert "only-engine-a-knows" not in b.services.secrets
    [error] = result.summary["errors"]
    assert f"missing-{MASK}.txt" in error["message"]
    assert "only-engine-a-knows" in str(result.errors[0])  # the exception itself is intact
    assert b.services.secrets.mask(str(result.errors[0])) == str(result.errors[0])


def test_read_yaml_reports_substitution_problems_as_yaml_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a:\n  - ok\n  - ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(YamlFileError) as info:
        read_yaml(path, environ={})
    error = info.value
    assert (error.line, error.where, error.syntax) == (3, "a[1]", False)
    assert read_yaml(path, substitute=False) == {"a": ["ok", "${NOT_SET_ANYWHERE}"]}


class AddressParams(BaseModel):
    url: str


async def connecting(params: AddressParams, ctx: headwater.StreamContext) -> Any:
    """Reports its (secret-bearing) address in its progress and status messages."""
    ctx.status(f"connecting to {params.url}")
    ctx.progress(1, 1, f"read from {params.url}")
    yield 1


class AddressPlugin:
    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(headwater.action("test.connecting", params=AddressParams)(connecting))


@pytest.mark.anyio
async def test_the_messages_of_a_runs_events_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headwater.builtin_plugins.catalogue import sinks as builtin_sinks

    monkeypatch.setenv("HW_TEST_HOST", "db-7c1e.internal")
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nsources:\n  n: {action: test.connecting, params: "
        "{url: 'postgres://app:pw-92ab@${HW_TEST_HOST}/x'}}\nsinks: [{sink: collect}]\n"
    )
    engine = headwater.Engine(plugins=[builtin_sinks, AddressPlugin()])
    messages = []
    async with engine.open_run(path) as handle:
        async for event in handle.events():
            message = getattr(event, "message", None)
            if message and getattr(event, "stage", None) == "sources.n":
                messages.append(message)
    assert messages == [
        f"connecting to postgres://app:{MASK}@{MASK}/x",
        f"read from postgres://app:{MASK}@{MASK}/x",
    ]
