"""Connection options: validated once, named without secrets.

libpq quotes fragments of a malformed connection string in its error messages, password
included (``missing "=" after "hunter2"``), so every message that comes from parsing goes
through :func:`redact_libpq_message` before it reaches an exception of ours.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ._driver import extensions, psycopg2

#: Arguments of ``psycopg2.connect`` that are not libpq connection options.
PYTHON_CONNECT_ARGS = frozenset({"connection_factory", "cursor_factory", "async", "async_"})

_OPTION_NAME = re.compile(r'invalid connection option "([A-Za-z_][A-Za-z0-9_]*)"')
_QUOTED = re.compile(r'"[^"]*"?')
# The fragment libpq quotes is the input itself, so it may contain quotes: `"[^"]*"` alone
# would end it early and show the rest. Libpq puts it last (`...: "<URI or token>"`), or
# in `missing "=" after "<word>" in connection info string`: those are cut out whole first.
_MISSING_EQUALS = re.compile(r'(missing "=" after )".*"( in connection info string)\Z', re.DOTALL)
_TRAILING = re.compile(r': ".*\Z', re.DOTALL)


def redact_libpq_message(message: str) -> str:
    """Remove every quoted fragment of a libpq parse error except an option's name."""
    message = message.strip()
    match = _OPTION_NAME.search(message)
    if match:
        return f'invalid connection option "{match.group(1)}"'
    message = _MISSING_EQUALS.sub(r'\1"…"\2', message)
    message = _TRAILING.sub(': "…"', message)
    return _QUOTED.sub('"…"', message)


def parse_options(connect_kwargs: dict[str, Any]) -> dict[str, str]:
    """Return the libpq options that ``connect_kwargs`` amount to (password included).

    Raises ``ValueError`` (bad DSN) or ``TypeError`` (unknown keyword) with a message that
    never quotes the connection string.
    """
    libpq_kwargs = {k: v for k, v in connect_kwargs.items()
                    if k not in PYTHON_CONNECT_ARGS and k != "dsn" and v is not None}
    dsn = connect_kwargs.get("dsn")
    if dsn is None:
        dsn = ""
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str (a libpq connection string or URI), "
                        f"got {type(dsn).__name__}")
    if "\x00" in dsn:  # libpq would read up to it and connect with the rest
        raise ValueError("invalid connection string (dsn): it contains a NUL character; "
                         "remove it")
    try:
        return dict(extensions.parse_dsn(extensions.make_dsn(dsn, **libpq_kwargs)))
    except psycopg2.ProgrammingError as exc:  # libpq refused the options
        detail = redact_libpq_message(str(exc).removeprefix("invalid dsn: "))
    # Raised outside the except block: libpq's own message (which may quote the password)
    # must not ride along as the new exception's __context__.
    if detail.startswith("invalid connection option"):
        raise TypeError(
            f"unknown connection argument: {detail}; pass only psycopg2.connect() "
            f"arguments and libpq connection options (host, port, dbname, user, "
            f"password, connect_timeout, sslmode, ...)")
    raise ValueError(f"invalid connection string (dsn): {detail}; check its "
                     f"key=value pairs or URI syntax")


def default_pool_name(options: dict[str, str]) -> str:
    """``server.address:server.port/db.namespace`` as the OpenTelemetry conventions advise.

    Environment variables fill in what the options leave out, as libpq itself does; the
    password and user never take part.
    """
    host = options.get("host") or options.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = options.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = (options.get("dbname") or os.environ.get("PGDATABASE")
              or options.get("user") or os.environ.get("PGUSER") or "postgres")
    return f"{host}:{port}/{dbname}"


__all__ = ["PYTHON_CONNECT_ARGS", "default_pool_name", "parse_options", "redact_libpq_message"]
