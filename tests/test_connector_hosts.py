"""The database and broker connectors reach only the hosts the sandbox allows: loopback
by default, more with ``hosts`` (``HEADWATER_ALLOW_HOSTS``), checked when the pipeline
is validated (naming the param) and again when the component connects."""

from __future__ import annotations

from typing import Any

import pytest

import headwater
from headwater.builtin_plugins._addresses import check_dsn, check_url
from headwater.core.policy import SandboxError


def pipeline(source: dict[str, Any] | None = None, sink: dict[str, Any] | None = None) -> Any:
    return {
        "name": "hosts",
        "sources": {"s": source or {"action": "range", "params": {"stop": 1}}},
        "sinks": [sink or {"sink": "collect"}],
        "checkpoint": {"store": "memory"},
    }


CASES = {
    "sources.s.params.dsn": pipeline(
        {
            "action": "postgres.query",
            "params": {
                "dsn": "postgresql://u@db.example.com:5432/app",
                "table": "t",
                "cursor": ["id"],
            },
        }
    ),
    "sinks[0].params.dsn": pipeline(
        sink={"sink": "postgres", "params": {"dsn": "host=db.example.com dbname=app", "table": "t"}}
    ),
    "sources.s.params.url": pipeline(
        {"action": "amqp", "params": {"url": "amqp://guest:guest@mq.example.com/", "queue": "q"}}
    ),
    "sinks[0].params.url": pipeline(
        sink={"sink": "mqtt", "params": {"url": "mqtt://broker.example.com:1883", "topic": "t"}}
    ),
}


@pytest.mark.parametrize("where", list(CASES))
def test_a_host_outside_the_sandbox_is_refused_naming_the_param(where: str) -> None:
    engine = headwater.Engine(policy=headwater.SandboxPolicy())
    with pytest.raises(headwater.PipelineValidationError) as info:
        engine.prepare(CASES[where])
    assert f"{where}: host " in str(info.value)
    assert "HEADWATER_ALLOW_HOSTS" in str(info.value)
    allowed = headwater.Engine(policy=headwater.SandboxPolicy(hosts=("*.example.com",)))
    allowed.prepare(CASES[where])  # the operator lists it: accepted


def test_loopback_and_unix_sockets_are_this_machine() -> None:
    policy = headwater.SandboxPolicy()
    for dsn in (
        "",
        "postgresql://postgres@127.0.0.1:5432/test",
        "host=localhost dbname=x",
        "host=/var/run/postgresql dbname=x",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
    ):
        assert check_dsn(policy, dsn) == dsn
    assert check_url(policy, "mqtt://[::1]:1883") == "mqtt://[::1]:1883"
    # every host of a multi-host string must be allowed
    with pytest.raises(SandboxError, match=r"'replica\.example\.com'"):
        check_dsn(policy, "host=127.0.0.1,replica.example.com port=5432,5433", param="dsn")
    ported = headwater.SandboxPolicy(hosts=("127.0.0.1", "replica.example.com:5433"))
    check_dsn(ported, "host=127.0.0.1,replica.example.com port=5432,5433")
    with pytest.raises(SandboxError, match=r"'replica\.example\.com'"):
        check_dsn(ported, "host=replica.example.com port=5432")


def test_a_string_that_is_no_connection_string_is_refused_when_connecting() -> None:
    policy = headwater.SandboxPolicy()
    text = "${PG_DSN:-postgresql://127.0.0.1/test}"  # not substituted: a dict, not a file
    assert check_dsn(policy, text, unparsable_ok=True) == text  # validation leaves it
    with pytest.raises(SandboxError, match="not a PostgreSQL connection string"):
        check_dsn(policy, text, param="sinks[0].params.dsn")
