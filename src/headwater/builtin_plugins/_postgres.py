"""What the PostgreSQL components (``postgres`` sink and store, ``postgres.query``) share.

* The lazy import of ``psycopg`` and ``psycopg_pool`` (the ``postgres`` extra) with an
  error that says what to install.
* Table names: ``table`` or ``schema.table``, plain identifiers only, quoted when used
  (:func:`check_table_name`, :func:`table_sql`), and checked against the operator's
  allowed tables (:meth:`~headwater.core.policy.SandboxPolicy.check_table`) both when
  params are validated and when the component starts.
* Which errors are transient (the server restarting or unreachable) for
  :mod:`headwater.core.reconnect`, and how a connection string is shown (without its
  password).
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import ValidationInfo

from headwater.core.policy import SandboxPolicy, policy_of

from ._brokers import require

__all__ = [
    "CHECKPOINT_TABLE",
    "EXTRA",
    "check_column_name",
    "check_table_name",
    "check_table_param",
    "display_dsn",
    "identifier",
    "psycopg",
    "table_sql",
    "transient",
]

EXTRA: Final = "postgres"
"""The extra that installs the client libraries: ``pip install 'headwater[postgres]'``."""

CHECKPOINT_TABLE: Final = "headwater_sink_checkpoints"
"""Where the transactional sink commits checkpoints, beside its rows."""

_PERMANENT: Final = frozenset({"28000", "28P01", "3D000", "42501"})
"""SQLSTATEs of connection errors that retrying cannot fix: authentication, missing
database, insufficient privilege."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def psycopg(component: str) -> Any:
    """The ``psycopg`` module, or :class:`~headwater.core.optional.MissingDependency`."""
    return require("psycopg", EXTRA, component)


def pool_module(component: str) -> Any:
    """The ``psycopg_pool`` module, or :class:`~headwater.core.optional.MissingDependency`."""
    return require("psycopg_pool", EXTRA, component)


def check_column_name(value: str, what: str = "column") -> str:
    """``value`` if it is a plain identifier (letters, digits, ``_``), else ValueError."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier (letters, digits and _, not "
            "starting with a digit, at most 63 characters)"
        )
    return value


def check_table_name(value: str) -> str:
    """``table`` or ``schema.table`` made of plain identifiers, else ValueError."""
    parts = value.split(".") if isinstance(value, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(
            f"table {value!r} is not a table name: write `table` or `schema.table`, each "
            "a plain SQL identifier (letters, digits and _)"
        )
    return value


def check_table_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator: a table outside the validation context's allowed tables fails
    validation (no policy in the context: no check)."""
    policy = policy_of(info.context)
    if policy is not None and isinstance(value, str):
        policy.check_table(value)
    return value


def check_query_allowed(policy: SandboxPolicy | None, param: str | None = None) -> None:
    """A free SQL query may read any table: refused when the operator lists tables."""
    if policy is None or policy.unrestricted or policy.tables is None:
        return
    from headwater.core.policy import SandboxError

    where = f"{param}: " if param else ""
    raise SandboxError(
        f"{where}free SQL queries are refused because the operator allows only some "
        "tables (HEADWATER_ALLOW_TABLES or the server's sandbox.tables); read a `table` "
        "instead"
    )


def identifier(name: str) -> str:
    """A checked identifier, double-quoted (case kept)."""
    return f'"{check_column_name(name)}"'


def table_sql(name: str) -> str:
    """A checked ``table`` or ``schema.table``, each part double-quoted."""
    return ".".join(f'"{part}"' for part in check_table_name(name).split("."))


def transient(exc: BaseException) -> bool:
    """True for errors of a server that is unreachable, restarting or shutting down."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    mod = psycopg("postgres")
    if isinstance(exc, mod.errors.AdminShutdown | mod.errors.CannotConnectNow):
        return True
    if isinstance(exc, mod.OperationalError):
        # refused credentials or a missing database will not heal by waiting
        return getattr(exc, "sqlstate", None) not in _PERMANENT
    pool = pool_module("postgres")
    return isinstance(exc, pool.PoolTimeout)


def display_dsn(dsn: str) -> str:
    """``postgresql://HOST:PORT/DB`` for a connection string (URL or ``key=value``),
    without user or password, for logs, errors and metrics."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # not installed or unparsable: show nothing secret
        return "postgresql://<unparsable address>"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    db = str(parts.get("dbname") or "")
    return f"postgresql://{host}:{port}/{db}"
