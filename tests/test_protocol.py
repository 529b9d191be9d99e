"""Protocol v1: client frame parsing (property-based), server messages, the core frame
encoder against the models, manager frames."""

from __future__ import annotations

import inspect
import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import headwater
from headwater.core.streaming import Frame, StreamError, StreamingConfig, StreamingManager, wire
from headwater.server.protocol import (
    CLIENT_MESSAGE_TYPES,
    ERROR_CODES,
    PARSE_ERROR_CODES,
    SERVER_MESSAGE_TYPES,
    CancelMessage,
    DroppedMessage,
    ErrorMessage,
    PingMessage,
    PongMessage,
    ProgressMessage,
    ProtocolError,
    ReplayGapMessage,
    RunMessage,
    RunStartedMessage,
    StatusMessage,
    StreamCompleteMessage,
    StreamErrorMessage,
    StreamUpdateMessage,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribedMessage,
    UnsubscribeMessage,
    encode_message,
    parse_client_frame,
    parse_server_frame,
    protocol_json_schema,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
huge_numbers = st.sampled_from(["1e400", "-1E+999", "1e308", "2.5e-400", "NaN", "Infinity"])
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
request_ids = st.none() | st.text(max_size=128) | st.integers(-(2**53), 2**53)
names = st.text(min_size=1, max_size=40)
seqs = st.integers(min_value=0, max_value=2**40)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

client_messages = st.one_of(
    st.builds(
        SubscribeMessage,
        stream=names,
        since=st.none() | seqs,
        epoch=st.none() | st.text(max_size=64),
        id=request_ids,
    ),
    st.builds(UnsubscribeMessage, stream=names, id=request_ids),
    st.builds(
        RunMessage,
        pipeline=names,
        params=json_objects,
        stream=st.none() | names,
        id=request_ids,
    ),
    st.builds(CancelMessage, stream=names, id=request_ids),
    st.builds(CancelMessage, run=names, id=request_ids),
    st.builds(PingMessage, id=request_ids),
)

optional_text = st.none() | st.text(max_size=20)
numbers = st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
server_messages = st.one_of(
    st.builds(
        SubscribedMessage,
        stream=names,
        epoch=names,
        seq=seqs,
        replayed=st.integers(0, 1000),
        ref=request_ids,
    ),
    st.builds(UnsubscribedMessage, stream=names, ref=request_ids),
    st.builds(StreamUpdateMessage, stream=names, seq=st.integers(1, 2**40), data=json_values),
    st.builds(
        ProgressMessage,
        stream=names,
        stage=names,
        done=numbers,
        total=st.none() | numbers,
        message=optional_text,
    ),
    st.builds(StatusMessage, stream=names, state=names, stage=optional_text, message=optional_text),
    st.builds(
        StreamCompleteMessage,
        stream=names,
        reason=names,
        last_seq=seqs,
        summary=st.none() | json_objects,
    ),
    st.builds(StreamErrorMessage, stream=names, error=json_objects),
    st.builds(
        ReplayGapMessage,
        stream=names,
        since=seqs,
        first_available=seqs,
        reason=st.sampled_from(["evicted", "epoch_changed", "ahead"]),
        epoch=names,
    ),
    st.builds(DroppedMessage, stream=names, count=st.integers(1, 10**6)),
    st.builds(RunStartedMessage, stream=names, run=names, pipeline=names, ref=request_ids),
    st.builds(PongMessage, id=request_ids),
    st.builds(
        ErrorMessage, code=st.sampled_from(sorted(ERROR_CODES)), message=st.text(), ref=request_ids
    ),
)

# objects shaped like client messages, with arbitrary values and stray keys
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_MESSAGE_TYPES, "nope"]) | json_scalars},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", True, None, 1.0]),
        "id": request_ids | json_values,
        "stream": names | json_values,
        "since": seqs | json_values,
        "epoch": st.text(max_size=70) | json_values,
        "pipeline": names | json_values,
        "params": json_objects | json_values,
        "run": names | json_values,
        "extra": json_values,
    },
)


def parse_or_error(raw: str | bytes, max_bytes: int) -> Any:
    """The parsed message, or the ProtocolError raised (any other exception escapes)."""
    try:
        return parse_client_frame(raw, max_bytes)
    except ProtocolError as exc:
        return exc


def check_parse(raw: str | bytes, max_bytes: int = 4096) -> None:
    """The property: a valid message, or a ProtocolError with a documented code."""
    result = parse_or_error(raw, max_bytes)
    if isinstance(result, ProtocolError):
        assert result.code in PARSE_ERROR_CODES
        assert result.message
        assert result.to_message().code == result.code
        return
    assert result.type in CLIENT_MESSAGE_TYPES
    assert result.v == 1
    # a parsed message survives a round trip unchanged
    assert parse_client_frame(encode_message(result), 10**7) == result


# -- client frames: properties ----------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    check_parse(raw)


@PROPERTY
@given(st.text(max_size=300))
def test_arbitrary_text(raw: str) -> None:
    check_parse(raw)


@PROPERTY
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    check_parse(json.dumps(value))


@PROPERTY
@given(message_like)
def test_message_like_objects(obj: dict[str, Any]) -> None:
    check_parse(json.dumps(obj))


@PROPERTY
@given(message_like, huge_numbers)
def test_numbers_out_of_range(obj: dict[str, Any], number: str) -> None:
    check_parse(json.dumps({**obj, "params": {"x": "N"}}).replace('"N"', number))


@PROPERTY
@given(message_like, st.integers(min_value=0, max_value=200))
def test_size_limit(obj: dict[str, Any], max_bytes: int) -> None:
    raw = json.dumps(obj)
    size = len(raw.encode())
    result = parse_or_error(raw, max_bytes)
    if isinstance(result, ProtocolError):
        assert result.code in PARSE_ERROR_CODES
        assert (result.code == "too_large") == (size > max_bytes)
    else:
        assert size <= max_bytes


@PROPERTY
@given(client_messages)
def test_client_messages_round_trip(message: Any) -> None:
    frame = encode_message(message)
    assert parse_client_frame(frame, 10**7) == message
    assert parse_client_frame(frame.decode(), 10**7) == message


# -- client frames: each code -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"\xff\xfe", "bad_json", "not valid JSON"),
        ("{", "bad_json", "not valid JSON"),
        ('{"type": "ping", "x": NaN}', "bad_json", "not valid JSON"),
        ('{"type": "run", "pipeline": "p", "params": {"x": [-1e400]}}', "bad_json", "range"),
        ("[" * 5000 + "]" * 5000, "bad_json", "not valid JSON"),
        ("\ud800", "bad_json", "Unicode"),
        ("[]", "not_an_object", "array"),
        ("null", "not_an_object", "null"),
        ('"ping"', "not_an_object", "string"),
        ('{"type": "ping", "v": 2}', "unsupported_version", "version 2"),
        ('{"type": "frobnicate"}', "unknown_type", "'frobnicate'"),
        ('{"type": 3}', "unknown_type", "3"),
        ('{"stream": "s"}', "invalid_message", "type: field required"),
        ('{"type": "subscribe"}', "invalid_message", "stream: field required"),
        ('{"type": "subscribe", "stream": "s", "since": -1}', "invalid_message", "since:"),
        ('{"type": "subscribe", "stream": "s", "since": "3"}', "invalid_message", "since:"),
        ('{"type": "subscribe", "stream": "s", "stream_id": 1}', "invalid_message", "stream_id"),
        ('{"type": "ping", "v": "1"}', "invalid_message", "v:"),
        ('{"type": "ping", "v": true}', "invalid_message", "v:"),
        ('{"type": "ping", "id": true}', "invalid_message", "id:"),
        ('{"type": "run", "pipeline": "p", "params": []}', "invalid_message", "params:"),
        ('{"type": "cancel"}', "invalid_message", "exactly one of"),
        ('{"type": "cancel", "stream": "s", "run": "r"}', "invalid_message", "exactly one of"),
    ],
)
def test_error_codes(raw: str | bytes, code: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(raw, 100_000)
    assert info.value.code == code
    assert fragment in info.value.message


def test_too_large() -> None:
    frame = json.dumps({"type": "ping", "id": "x" * 100})
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frame, 50)
    assert info.value.code == "too_large"
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frame.encode(), 50)
    assert info.value.code == "too_large"
    # the limit is in bytes of UTF-8, not characters
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type":"ping","id":"' + "é" * 20 + '"}', 50)
    assert info.value.code == "too_large"


def test_nested_field_paths_are_named() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type": "run", "pipeline": "", "params": {"a": 1}, "stream": 5}')
    assert info.value.message.startswith("pipeline: ")
    assert "stream: " in info.value.message


def test_error_names_the_request() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type": "subscribe", "id": "req-7"}')
    assert info.value.ref == "req-7"
    assert info.value.to_message() == ErrorMessage(
        code="invalid_message", message="stream: field required", ref="req-7"
    )
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type": "nope", "id": 12}')
    assert info.value.ref == 12
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type": "nope", "id": {"a": 1}}')
    assert info.value.ref is None


def test_valid_messages() -> None:
    assert parse_client_frame('{"type":"subscribe","stream":"s","since":4,"epoch":"e"}') == (
        SubscribeMessage(stream="s", since=4, epoch="e")
    )
    assert parse_client_frame(b'{"type":"ping","v":1,"id":"p1"}') == PingMessage(id="p1")
    run = parse_client_frame('{"type":"run","pipeline":"p","params":{"n":[1,2]}}')
    assert isinstance(run, RunMessage)
    assert run.params == {"n": [1, 2]}
    assert run.stream is None
    cancel = parse_client_frame('{"type":"cancel","run":"r1"}')
    assert isinstance(cancel, CancelMessage)
    assert (cancel.stream, cancel.run) == (None, "r1")


def test_not_a_frame() -> None:
    with pytest.raises(TypeError):
        parse_client_frame(42, 10)  # type: ignore[arg-type]


# -- server messages --------------------------------------------------------------------


@PROPERTY
@given(server_messages)
def test_server_messages_round_trip(message: Any) -> None:
    frame = encode_message(message)
    parsed = parse_server_frame(frame)
    assert parsed == message
    assert parsed.model_dump(mode="json") == json.loads(frame)


def test_server_frames_are_read_tolerantly() -> None:
    parsed = parse_server_frame('{"type":"pong","v":1,"id":1,"added_later":true}')
    assert parsed == PongMessage(id=1)
    for raw, code in [
        ('{"type":"pong","v":2}', "unsupported_version"),
        ('{"type":"later"}', "unknown_type"),
        ('{"type":"stream_update","stream":"s"}', "invalid_message"),
        ("[1]", "not_an_object"),
        ("nope", "bad_json"),
    ]:
        with pytest.raises(ProtocolError) as info:
            parse_server_frame(raw)
        assert info.value.code == code


def test_schema_covers_every_type() -> None:
    schema = protocol_json_schema()
    text = json.dumps(schema)
    for kind in (*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES):
        assert f'"const": "{kind}"' in text
    assert set(schema) == {"client", "server"}


@pytest.mark.parametrize(
    ("stream_code", "protocol_code"),
    [
        ("unknown_stream", "unknown_stream"),
        ("stream_closed", "stream_closed"),
        ("stream_exists", "stream_exists"),
        ("too_many_streams", "limit_reached"),
        ("too_many_clients", "limit_reached"),
        ("client_exists", "already_subscribed"),
        ("unknown_client", "not_subscribed"),
        ("invalid_stream_id", "invalid_message"),
        ("shutting_down", "unavailable"),
        ("unencodable_chunk", "internal_error"),
    ],
)
def test_stream_errors_map_to_protocol_codes(stream_code: Any, protocol_code: str) -> None:
    error = ProtocolError.from_stream_error(StreamError("text", code=stream_code), ref="r")
    assert (error.code, error.message, error.ref) == (protocol_code, "text", "r")
    assert error.code in ERROR_CODES


# -- the core frame encoder produces what the models describe ---------------------------

SERVER_MODELS: dict[str, type[BaseModel]] = {
    "subscribed": SubscribedMessage,
    "unsubscribed": UnsubscribedMessage,
    "stream_update": StreamUpdateMessage,
    "progress": ProgressMessage,
    "status": StatusMessage,
    "stream_complete": StreamCompleteMessage,
    "stream_error": StreamErrorMessage,
    "replay_gap": ReplayGapMessage,
    "dropped": DroppedMessage,
    "run_started": RunStartedMessage,
    "pong": PongMessage,
    "error": ErrorMessage,
}

# The arguments of each encoder, as the manager and the server pass them (plain values,
# not models: e.g. an int `done`, any JSON chunk data, any summary).
encoder_arguments: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "subscribed": st.fixed_dictionaries(
        {
            "stream": names,
            "epoch": names,
            "seq": seqs,
            "replayed": st.integers(0, 1000),
            "ref": request_ids,
        }
    ),
    "unsubscribed": st.fixed_dictionaries({"stream": names, "ref": request_ids}),
    "stream_update": st.fixed_dictionaries(
        {"stream": names, "seq": st.integers(1, 2**40), "data": json_values}
    ),
    "progress": st.fixed_dictionaries(
        {
            "stream": names,
            "stage": names,
            "done": numbers,
            "total": st.none() | numbers,
            "message": optional_text,
        }
    ),
    "status": st.fixed_dictionaries(
        {"stream": names, "state": names, "stage": optional_text, "message": optional_text}
    ),
    "stream_complete": st.fixed_dictionaries(
        {
            "stream": names,
            "reason": names,
            "last_seq": seqs,
            "summary": st.none() | json_objects,
        }
    ),
    "stream_error": st.fixed_dictionaries({"stream": names, "error": json_objects}),
    "replay_gap": st.fixed_dictionaries(
        {
            "stream": names,
            "since": seqs,
            "first_available": seqs,
            "reason": st.sampled_from(["evicted", "epoch_changed", "ahead"]),
            "epoch": names,
        }
    ),
    "dropped": st.fixed_dictionaries({"stream": names, "count": st.integers(1, 10**6)}),
    "run_started": st.fixed_dictionaries(
        {"stream": names, "run": names, "pipeline": names, "ref": request_ids}
    ),
    "pong": st.fixed_dictionaries({"id": request_ids}),
    "error": st.fixed_dictionaries(
        {"code": st.sampled_from(sorted(ERROR_CODES)), "message": st.text(), "ref": request_ids}
    ),
}


def check_server_frame(kind: str, frame: bytes) -> None:
    """The property: ``frame`` is a valid ``kind`` message, and its model loses nothing."""
    parsed = parse_server_frame(frame)
    assert type(parsed) is SERVER_MODELS[kind]
    assert parsed.model_dump(mode="json") == json.loads(frame)
    assert list(json.loads(frame)) == ["type", "v", *encoder_fields(kind)]


def encoder_fields(kind: str) -> list[str]:
    """The fields an encoder writes: its parameters, except keyword-only options."""
    parameters = inspect.signature(wire.SERVER_FRAMES[kind]).parameters.values()
    return [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY]


def test_one_encoder_per_server_message_type() -> None:
    assert tuple(wire.SERVER_FRAMES) == SERVER_MESSAGE_TYPES
    assert set(SERVER_MODELS) == set(SERVER_MESSAGE_TYPES) == set(encoder_arguments)
    for kind, model in SERVER_MODELS.items():
        # the encoder's parameters are the model's fields, in the same order
        assert ["type", "v", *encoder_fields(kind)] == list(model.model_fields), kind


@PROPERTY
@given(st.one_of([st.tuples(st.just(k), args) for k, args in encoder_arguments.items()]))
def test_encoder_frames_validate_against_the_models(case: tuple[str, dict[str, Any]]) -> None:
    kind, arguments = case
    check_server_frame(kind, wire.SERVER_FRAMES[kind](**arguments))


@PROPERTY
@given(server_messages)
def test_encode_message_is_the_models_own_serialisation(message: Any) -> None:
    # server messages go through the core encoder: byte for byte what pydantic writes
    assert encode_message(message) == message.model_dump_json().encode()


@PROPERTY
@given(names, st.integers(1, 2**40), json_values)
def test_the_hot_stream_update_template(stream: str, seq: int, data: Any) -> None:
    frame = wire.stream_update_encoded(wire.encode_json(stream), seq, wire.encode_json(data))
    assert frame == wire.stream_update(stream, seq, data)
    assert (
        frame == StreamUpdateMessage(stream=stream, seq=seq, data=data).model_dump_json().encode()
    )
    check_server_frame("stream_update", frame)


def test_lenient_frames_validate() -> None:
    unserialisable = {"error": "E", "obj": object(), "n": 1}
    with pytest.raises(ValueError, match="serialize"):
        wire.stream_error("s", unserialisable)
    frame = wire.stream_error("s", unserialisable, lenient=True)
    check_server_frame("stream_error", frame)
    assert json.loads(frame)["error"]["n"] == 1
    with pytest.raises(ValueError, match="serialize"):
        wire.stream_complete("s", "completed", 3, {"x": object()})
    frame = wire.stream_complete("s", "completed", 3, {"x": object()}, lenient=True)
    parsed = parse_server_frame(frame)
    assert parsed == StreamCompleteMessage(stream="s", reason="completed", last_seq=3)
    assert b"summary" not in frame


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (headwater.Progress("sources.x", 3, 10, "reading"), "progress"),
        (headwater.Progress("sources.x", 0.5), "progress"),
        (headwater.Status("running"), "status"),
        (headwater.Status("failed", "sinks.y", "boom"), "status"),
        (headwater.ErrorEvent("st", {"error": "E", "message": "m"}, handled=True), "stream_error"),
    ],
)
def test_event_frames_validate(event: Any, kind: str) -> None:
    frame = wire.event_frame("s", event)
    assert json.loads(frame)["type"] == kind
    parsed = parse_server_frame(frame)
    assert type(parsed) is SERVER_MODELS[kind]
    assert parsed.model_dump(mode="json") == json.loads(frame)


def test_complete_has_no_event_frame() -> None:
    with pytest.raises(TypeError):
        wire.event_frame("s", headwater.Complete("succeeded", {}))


# -- the manager speaks this protocol ---------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    async def send(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def close(self, code: str, reason: str) -> None:
        pass


@pytest.mark.anyio
async def test_manager_frames_validate_against_the_models() -> None:
    config = StreamingConfig(inactivity_timeout=None, replay_max_chunks=2, client_queue_size=2)
    live, resumed = Recorder(), Recorder()
    async with StreamingManager(config) as mgr:
        await mgr.create_stream("s")
        await mgr.register_client("s", "live", live, ref=1)
        await mgr.push_many("s", [{"a": 1}, [1, 2], "x", None])
        await mgr.register_client("s", "resumed", resumed, since=0, ref="r")
        await mgr.forward_event("s", headwater.Progress("sources.x", 1, None))
        await mgr.forward_event("s", headwater.Status("running", "sources.x", "ok"))
        await mgr.forward_event("s", headwater.ErrorEvent("st", {"error": "E"}, handled=False))
        await mgr.deregister_client("s", "resumed", ref="u")
        await anyio.wait_all_tasks_blocked()
        await mgr.handle_stream_error("s", ValueError("boom"))
    seen = set()
    for frame in live.frames + resumed.frames:
        parsed = parse_server_frame(frame)
        assert parsed.model_dump(mode="json") == json.loads(frame), frame
        seen.add(parsed.type)
    assert seen == {
        "subscribed",
        "stream_update",
        "replay_gap",
        "progress",
        "status",
        "stream_error",
        "unsubscribed",
        "stream_complete",
    }


@pytest.mark.anyio
async def test_dropped_frame_validates() -> None:
    config = StreamingConfig(inactivity_timeout=None, client_queue_size=1)
    gate = anyio.Event()

    class Slow(Recorder):
        async def send(self, frame: Frame) -> None:
            await gate.wait()
            await super().send(frame)

    slow = Slow()
    async with StreamingManager(config) as mgr:
        await mgr.create_stream("s")
        await mgr.register_client("s", "slow", slow)
        await anyio.wait_all_tasks_blocked()
        await mgr.push_many("s", range(5))
        gate.set()
        await anyio.wait_all_tasks_blocked()
    dropped = [parse_server_frame(f) for f in slow.frames if b'"dropped"' in f]
    assert dropped == [DroppedMessage(stream="s", count=4)]
