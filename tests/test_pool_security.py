"""No password, in any form, reaches repr, errors, stats or events."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg2
import pytest

from psycopg2_pool import ConnectionPool, PoolExhausted, PoolListener

SECRET = "Sup3r-S3cret-pw"

SHAPES = [
    {"dsn": f"postgresql://app:{SECRET}@127.0.0.1:1/db", "connect_timeout": 2},
    {"dsn": f"host=127.0.0.1 port=1 user=app password={SECRET} dbname=db",
     "connect_timeout": 2},
    {"host": "127.0.0.1", "port": 1, "user": "app", "password": SECRET, "dbname": "db",
     "connect_timeout": 2},
    {"dsn": f"postgresql://app@127.0.0.1:1/db?password={SECRET}", "connect_timeout": 2},
]


class Everything(PoolListener):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda event: object.__getattribute__(self, "seen").append(repr(event))
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("kwargs", SHAPES, ids=["uri", "key-value", "keywords", "uri-query"])
def test_password_never_shows(kwargs: dict[str, Any]) -> None:
    pool = ConnectionPool(0, 1, **kwargs)
    listener = Everything()
    pool.add_listener(listener)
    texts = [repr(pool), pool.name, str(pool.get_stats())]
    with pytest.raises(psycopg2.OperationalError) as raised:
        pool.getconn()
    texts.append(str(raised.value))
    pool.close()
    with pytest.raises(psycopg2.Error) as closed:
        pool.getconn()
    texts.append(str(closed.value))
    texts.extend(listener.seen)
    for text in texts:
        assert SECRET not in text


def test_password_from_pgpassword_never_shows(dsn: str) -> None:
    env = dict(os.environ, PGPASSWORD=SECRET)
    code = ("import sys; from psycopg2_pool import ConnectionPool, PoolExhausted\n"
            "pool = ConnectionPool(0, 1, dsn=sys.argv[1], name=None)\n"
            "c = pool.getconn()\n"
            "try:\n    pool.getconn()\nexcept PoolExhausted as e:\n    print(e)\n"
            "print(repr(pool)); print(pool.get_stats()); pool.putconn(c); pool.close()\n")
    result = subprocess.run([sys.executable, "-c", code, dsn], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no more connections in the pool" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_exhaustion_message_has_no_password(dsn: str) -> None:
    pool = ConnectionPool(0, 1, dsn=dsn, password=SECRET)
    conn = pool.getconn()
    with pytest.raises(PoolExhausted) as raised:
        pool.getconn()
    assert SECRET not in str(raised.value) and SECRET not in repr(pool)
    pool.putconn(conn)
    pool.close()
