"""Connection checks of the built-in connectors (``headwater validate --check-connections``).

Each connector declares its check with ``check=`` in its decorator; the checks live here,
one module per family (:mod:`.brokers`: Redis and NATS; :mod:`.queues`: AMQP and MQTT;
:mod:`.databases`: PostgreSQL and SQLite; :mod:`.web`: HTTP; :mod:`.files`: file sinks;
:mod:`.network` is what they share),
so that importing a connector stays cheap: a check imports its client library when it
runs. Every check honours the sandbox as its component does when it connects, asks only
read-only questions, and raises :class:`~headwater.core.connection_checks.CheckFailed`
naming the address (without credentials) and what is wrong.
"""

# Nothing is imported here: a connector imports only the module of its own check.
