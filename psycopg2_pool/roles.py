"""Which server a connection is on, and whether that server still plays the role the pool
asked libpq for (``target_session_attrs``).

libpq picks the server when it connects: with ``host=a,b target_session_attrs=read-write``
it skips a read-only one. Afterwards nothing rechecks, so after a failover (the primary
fenced or demoted, an endpoint pointed at a replica, a standby promoted) every pooled
connection stays pinned to a server that no longer takes the writes, or the reads, it was
opened for, until ``max_lifetime`` retires it. The pool asks this module, on every return,
whether the connection's server changed role.

The signal costs no round trip: PostgreSQL 14 and later report ``default_transaction_read_only``
and ``in_hot_standby`` to the client whenever they change (a ``ParameterStatus`` message that
libpq keeps; ``connection.get_parameter_status()`` reads it). The server sends it with the
reply to the first statement after the change, so a connection notices on its first use
afterwards, and a write that fails with SQLSTATE 25006 (``read_only_sql_transaction``)
carries it. On older servers the parameters are not reported and nothing is noticed here
(``max_lifetime`` and errors remain).

Role, by ``target_session_attrs`` (libpq's values), and what loses it:

- ``read-write``: the server turned read-only (``default_transaction_read_only=on``: fenced,
  or a standby behind the same endpoint), or is in recovery;
- ``read-only``: the server is writable again (both off: a promoted standby);
- ``standby``: the server left recovery (``in_hot_standby=off``: promoted);
- ``primary``, ``any``, ``prefer-standby`` (the default ``any``): nothing is checked. A
  primary enters recovery only through a restart, which breaks its connections (the outage
  machinery replaces those); ``primary`` accepts a fenced read-only primary, as libpq does.

Reading a parameter costs ~165 ns (psycopg2's ``get_parameter_status``), so a return makes one
read, of the parameter that changes first (:data:`FAST`), and only a connection that fails it
is looked at fully (:data:`LOST`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

READ_ONLY = "default_transaction_read_only"
HOT_STANDBY = "in_hot_standby"


def _read_write_lost(conn: Any) -> bool:
    status = conn.get_parameter_status
    return bool(status(READ_ONLY) == "on" or status(HOT_STANDBY) == "on")


def _read_only_lost(conn: Any) -> bool:
    status = conn.get_parameter_status
    return bool(status(READ_ONLY) == "off" and status(HOT_STANDBY) == "off")


def _standby_lost(conn: Any) -> bool:
    return bool(conn.get_parameter_status(HOT_STANDBY) == "off")


#: ``target_session_attrs`` -> whether a connection's server no longer plays that role.
LOST: dict[str, Callable[[Any], bool]] = {
    "read-write": _read_write_lost,
    "read-only": _read_only_lost,
    "standby": _standby_lost,
}

#: ``target_session_attrs`` -> (parameter, value): the one read a return makes; a connection
#: whose server reports that value is then checked with :data:`LOST`.
FAST: dict[str, tuple[str, str]] = {
    "read-write": (READ_ONLY, "on"),
    "read-only": (HOT_STANDBY, "off"),
    "standby": (HOT_STANDBY, "off"),
}


def wanted_role(options: dict[str, str]) -> str | None:
    """The role the pool's connections must keep (``target_session_attrs``), or None."""
    role = options.get("target_session_attrs")
    return role if role in LOST else None


def server_of(conn: Any) -> str:
    """``host:port`` of the server a connection is on, as libpq chose it among the DSN's
    hosts (a socket directory for a unix socket); never a secret."""
    try:
        info = conn.info
        return f"{info.host}:{info.port}"
    except Exception:  # noqa: BLE001 - a closed connection: unknown, never shared
        return f"unknown:{id(conn)}"


def describe(conn: Any) -> str:
    """What the server reports of its role, for logs: ``read_only=on in_hot_standby=off``."""
    return (f"default_transaction_read_only={conn.get_parameter_status(READ_ONLY)} "
            f"in_hot_standby={conn.get_parameter_status(HOT_STANDBY)}")


__all__ = ["FAST", "HOT_STANDBY", "LOST", "READ_ONLY", "describe", "server_of", "wanted_role"]
