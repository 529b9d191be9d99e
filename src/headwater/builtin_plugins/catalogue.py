"""The built-in plugins, as the ``headwater`` entry points name them.

Each built-in plugin registers its components by name (:class:`LazyComponent`): loading
the plugins imports this module only, and a component's module is imported the first
time a pipeline (or a listing such as ``headwater plugins``) needs the component itself.
``headwater run`` of a pipeline of ``range``, ``map`` and ``stdout`` therefore never
imports the HTTP, broker or database connectors. The list below is the one place that
says which built-in plugin contributes which component; ``tests/test_catalogue.py``
checks that every target loads and carries the name it is registered under.
"""

from __future__ import annotations

from typing import Any

import headwater
from headwater.core.components import ComponentKind, LazyComponent

__all__ = [
    "BuiltinPlugin",
    "amqp",
    "command",
    "exporters",
    "files",
    "http",
    "mqtt",
    "nats",
    "postgres",
    "redis",
    "sinks",
    "sources",
    "stores",
    "transformers",
]

_ACTION = ComponentKind.ACTION
_TRANSFORMER = ComponentKind.TRANSFORMER
_SINK = ComponentKind.SINK
_EXPORTER = ComponentKind.EXPORTER
_STORE = ComponentKind.CHECKPOINT_STORE

_PACKAGE = "headwater.builtin_plugins"


class BuiltinPlugin:
    """One built-in plugin: ``(kind, name, "module:attribute")`` per component, each
    registered lazily from the collection hook of its kind."""

    def __init__(self, name: str, module: str, *components: tuple[ComponentKind, str, str]) -> None:
        self.__name__ = f"headwater.{name}"
        """The plugin's name (its entry point's), also when it is registered directly."""
        self.__module__ = f"{_PACKAGE}.{module}"
        """The implementation module, shown by ``headwater plugins`` as the plugin's."""
        self.components = tuple(
            (kind, LazyComponent(name, f"{_PACKAGE}.{target}")) for kind, name, target in components
        )

    def __repr__(self) -> str:
        return f"<built-in plugin {self.__module__}>"

    def _register(self, kind: ComponentKind, register: Any) -> None:
        for own_kind, lazy in self.components:
            if own_kind is kind:
                register(lazy)

    @headwater.hookimpl
    def register_actions(self, register: Any) -> None:
        """Register this plugin's actions by name."""
        self._register(_ACTION, register)

    @headwater.hookimpl
    def register_transformers(self, register: Any) -> None:
        """Register this plugin's transformers by name."""
        self._register(_TRANSFORMER, register)

    @headwater.hookimpl
    def register_sinks(self, register: Any) -> None:
        """Register this plugin's sinks by name."""
        self._register(_SINK, register)

    @headwater.hookimpl
    def register_metrics_exporters(self, register: Any) -> None:
        """Register this plugin's metrics exporters by name."""
        self._register(_EXPORTER, register)

    @headwater.hookimpl
    def register_checkpoint_stores(self, register: Any) -> None:
        """Register this plugin's checkpoint stores by name."""
        self._register(_STORE, register)


sources = BuiltinPlugin(
    "sources",
    "sources",
    (_ACTION, "range", "sources:range_source"),
    (_ACTION, "iterable", "sources:iterable_source"),
    (_ACTION, "file.lines", "sources:file_lines_source"),
    (_ACTION, "stdin", "sources:stdin_source"),
)
transformers = BuiltinPlugin(
    "transformers",
    "transformers",
    (_TRANSFORMER, "map", "transformers.itemwise:map_transformer"),
    (_TRANSFORMER, "filter", "transformers.itemwise:filter_transformer"),
    (_TRANSFORMER, "select", "transformers.itemwise:select_transformer"),
    (_TRANSFORMER, "flatten", "transformers.itemwise:flatten_transformer"),
    (_TRANSFORMER, "json.decode", "transformers.parsing:json_decode_transformer"),
    (_TRANSFORMER, "json.encode", "transformers.parsing:json_encode_transformer"),
    (_TRANSFORMER, "regex", "transformers.parsing:regex_transformer"),
    (_TRANSFORMER, "batch", "transformers.batching:batch_transformer"),
    (_TRANSFORMER, "window", "transformers.batching:window_transformer"),
    (_TRANSFORMER, "reduce", "transformers.aggregation:reduce_transformer"),
    (_TRANSFORMER, "aggregate", "transformers.aggregation:aggregate_transformer"),
    (_TRANSFORMER, "take", "transformers.streamwise:take_transformer"),
    (_TRANSFORMER, "skip", "transformers.streamwise:skip_transformer"),
    (_TRANSFORMER, "dedupe", "transformers.streamwise:dedupe_transformer"),
    (_TRANSFORMER, "throttle", "transformers.streamwise:throttle_transformer"),
    (_TRANSFORMER, "stateful_map", "transformers.keyed:stateful_map_transformer"),
)
sinks = BuiltinPlugin(
    "sinks",
    "sinks",
    (_SINK, "collect", "sinks:CollectSink"),
    (_SINK, "null", "sinks:NullSink"),
    (_SINK, "stdout", "sinks:StdoutSink"),
    (_SINK, "jsonl", "sinks:JsonlSink"),
    (_SINK, "sqlite", "sqlite_sink:SqliteSink"),
    (_SINK, "websocket", "sinks:WebsocketSink"),
)
stores = BuiltinPlugin(
    "stores",
    "stores",
    (_STORE, "sqlite", "stores:SQLiteStore"),
    (_STORE, "memory", "stores:MemoryStore"),
)
files = BuiltinPlugin(
    "files",
    "files",
    (_ACTION, "file.view", "files.view:file_view"),
    (_ACTION, "file.find", "files.find:file_find"),
    (_ACTION, "dir.tree", "files.tree:dir_tree"),
)
command = BuiltinPlugin("command", "command", (_ACTION, "command", "command:command"))
exporters = BuiltinPlugin(
    "exporters",
    "exporters",
    (_EXPORTER, "prometheus", "exporters:PrometheusExporter"),
    (_EXPORTER, "jsonl", "exporters:JsonlExporter"),
    (_EXPORTER, "otel", "exporters:OpenTelemetryExporter"),
)
http = BuiltinPlugin(
    "http",
    "http",
    (_ACTION, "http.webhook", "http.webhook:webhook_source"),
    (_ACTION, "sse", "http.sse:sse_source"),
    (_TRANSFORMER, "http.request", "http.request:http_request"),
    (_SINK, "http", "http.sink:HttpSink"),
)
redis = BuiltinPlugin(
    "redis",
    "redis_streams",
    (_ACTION, "redis.stream", "redis_streams:redis_stream_source"),
    (_SINK, "redis.stream", "redis_sink:RedisStreamSink"),
    (_STORE, "redis", "redis_sink:RedisCheckpointStore"),
)
nats = BuiltinPlugin(
    "nats",
    "nats_jetstream",
    (_ACTION, "nats.jetstream", "nats_jetstream:nats_jetstream_source"),
    (_SINK, "nats.jetstream", "nats_sink:NatsStreamSink"),
)
postgres = BuiltinPlugin(
    "postgres",
    "postgres",
    (_ACTION, "postgres.query", "postgres:postgres_query_source"),
    (_SINK, "postgres", "postgres_sink:PostgresSink"),
    (_STORE, "postgres", "postgres_store:PostgresCheckpointStore"),
)
amqp = BuiltinPlugin(
    "amqp",
    "amqp",
    (_ACTION, "amqp", "amqp:amqp_source"),
    (_SINK, "amqp", "amqp_sink:AmqpSink"),
)
mqtt = BuiltinPlugin(
    "mqtt",
    "mqtt",
    (_ACTION, "mqtt", "mqtt:mqtt_source"),
    (_SINK, "mqtt", "mqtt:MqttSink"),
)
