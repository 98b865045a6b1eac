"""The watchdog behind ``io_timeout``: it shuts down a socket only past its deadline."""

from __future__ import annotations

import os
import socket
import time

from psycopg2_pool._watchdog import Watchdog


def test_a_deadline_that_passes_shuts_the_socket_down() -> None:
    dog = Watchdog()
    ours, peer = socket.socketpair()
    try:
        token = dog.token()
        dog.arm(token, ours.fileno(), 0.05)
        ours.settimeout(2)
        started = time.monotonic()
        assert ours.recv(10) == b""  # a blocked read ends: the socket was shut down
        assert 0.04 <= time.monotonic() - started < 1.0
        assert dog.disarm(token) is True
        assert ours.fileno() >= 0  # shut down, not closed: the owner closes it
    finally:
        ours.close()
        peer.close()


def test_disarmed_in_time_nothing_happens() -> None:
    dog = Watchdog()
    ours, peer = socket.socketpair()
    try:
        tokens = [dog.token() for _ in range(100)]
        for token in tokens:
            dog.arm(token, ours.fileno(), 0.05)
        assert not any(dog.disarm(t) for t in tokens)
        time.sleep(0.15)
        peer.sendall(b"still open")
        assert ours.recv(20) == b"still open"
        assert dog._armed == {} and dog._fired == set()
    finally:
        ours.close()
        peer.close()


def test_a_forked_child_gets_a_working_watchdog() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    first = dog.token()
    dog.arm(first, a.fileno(), 10)
    dog.disarm(first)  # the parent's thread is running
    a.close()
    b.close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            dog._reset()  # as register_at_fork does for the module's watchdog
            ours, _peer = socket.socketpair()
            token = dog.token()
            dog.arm(token, ours.fileno(), 0.05)
            ours.settimeout(2)
            code = 0 if ours.recv(10) == b"" and dog.disarm(token) else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_stale_deadline_never_shuts_down_a_socket_that_reused_the_number() -> None:
    """Should a disarm be skipped (a second exception in the caller's finally), the number
    may belong to another socket by the deadline: that one is left alone."""
    dog = Watchdog()
    old, old_peer = socket.socketpair()
    number = old.fileno()
    dog.arm(dog.token(), number, 0.1)  # never disarmed
    old.close()
    old_peer.close()
    new, new_peer = socket.socketpair()  # the lowest free numbers: likely the same one
    try:
        time.sleep(0.3)
        new_peer.sendall(b"alive")
        new.settimeout(2)
        assert new.recv(10) == b"alive"  # not shut down, whatever its number
    finally:
        new.close()
        new_peer.close()
