"""Heavy thread contention: no error, no connection shared, all returned, server count bounded."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from conftest import backend_count

from psycopg2_pool import ThreadedConnectionPool

THREADS = 32
CYCLES = 2_000
MAXCONN = 4


def test_32_threads_2000_cycles_on_4_connections(dsn: str, admin: Any, app_name: str) -> None:
    pool = ThreadedConnectionPool(1, MAXCONN, timeout=10, dsn=dsn, application_name=app_name)
    holders: dict[int, int] = {}
    holders_lock = threading.Lock()
    errors: list[str] = []
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], backend_count(admin, app_name))

    def work(seed: int) -> None:
        rng = random.Random(seed)
        me = threading.get_ident()
        try:
            for _ in range(CYCLES):
                conn = pool.getconn()
                with holders_lock:
                    if id(conn) in holders:
                        errors.append("a connection was handed to two threads")
                    holders[id(conn)] = me
                if rng.random() < 0.02:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                        assert cur.fetchone() == (1,)
                with holders_lock:
                    del holders[id(conn)]
                pool.putconn(conn)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    sampler.join()
    elapsed = time.monotonic() - started
    stats = pool.get_stats()
    assert errors == []
    assert stats["requests"] == THREADS * CYCLES
    assert stats["returns"] == THREADS * CYCLES
    assert stats["pool_in_use"] == 0 and stats["requests_waiting"] == 0
    assert stats["pool_size"] <= MAXCONN
    assert stats["pool_available"] == stats["pool_size"]
    assert stats["timeouts"] == 0
    assert peak[0] <= MAXCONN
    assert backend_count(admin, app_name) == stats["pool_size"]
    pool.close()
    print(f"{THREADS * CYCLES} cycles in {elapsed:.2f} s, peak {peak[0]} server connections")
