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
    # libpq's own `"="` (in `missing "=" after`) says what to add: it quotes no input.
    return _QUOTED.sub(lambda m: m.group() if m.group() == '"="' else '"…"', message)


def parse_options(connect_kwargs: dict[str, Any]) -> dict[str, str]:
    """Return the libpq options that ``connect_kwargs`` amount to (password included).

    Raises ``ValueError`` for a malformed DSN (an unknown option inside the string included:
    the string is at fault, as with any other bad key=value pair) and ``TypeError`` for an
    unknown keyword argument (as Python does for an unexpected keyword), with a message that
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
    # The string alone first, so that its faults are told from the keywords'.
    detail = _libpq_refusal(dsn)
    if detail is not None:
        raise ValueError(_bad_dsn(detail))
    try:
        return dict(extensions.parse_dsn(extensions.make_dsn(dsn, **libpq_kwargs)))
    except psycopg2.ProgrammingError as exc:  # libpq refused a keyword
        detail = redact_libpq_message(str(exc).removeprefix("invalid dsn: "))
    # Raised outside the except block: libpq's own message (which may quote the password)
    # must not ride along as the new exception's __context__.
    if detail.startswith("invalid connection option"):
        raise TypeError(
            f"unknown connection argument: {detail}; pass only psycopg2.connect() "
            f"arguments and libpq connection options (host, port, dbname, user, "
            f"password, connect_timeout, sslmode, ...)")
    raise ValueError(_bad_dsn(detail))


def _libpq_refusal(dsn: str) -> str | None:
    """libpq's reason for refusing ``dsn`` (redacted), or None if it parses."""
    try:
        extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        return redact_libpq_message(str(exc).removeprefix("invalid dsn: "))
    return None


def _bad_dsn(detail: str) -> str:
    if detail.startswith("invalid connection option"):
        return (f"invalid connection string (dsn): {detail}; check the option's spelling "
                f"(host, port, dbname, user, password, connect_timeout, sslmode, ...)")
    return f"invalid connection string (dsn): {detail}; check its key=value pairs or URI syntax"


def default_pool_name(options: dict[str, str]) -> str:
    """``server.address:server.port/db.namespace`` as the OpenTelemetry conventions advise.

    Environment variables fill in what the options leave out, as libpq itself does; the
    password and user never take part.
    """
    host = options.get("host") or options.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = options.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = (options.get("dbname") or os.environ.get("PGDATABASE")
              or options.get("user") or os.environ.get("PGUSER") or _os_user())
    return f"{host}:{port}/{dbname}"


def _os_user() -> str:
    """libpq's last resort for the user, hence the database: the effective OS user's name."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # not POSIX, or a uid without a passwd entry
        import getpass

        try:
            return getpass.getuser()
        except Exception:  # noqa: BLE001 - no name at all: the name is only a label
            return "postgres"


__all__ = ["PYTHON_CONNECT_ARGS", "default_pool_name", "parse_options", "redact_libpq_message"]
