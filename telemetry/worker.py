"""One background thread per process for the telemetry's periodic work.

Flushing buffered latencies into the OpenTelemetry SDK (~5 µs a value) and scanning for
leaks must stay off ``getconn``/``putconn``. Rather than a thread per pool or a timer per
checkout, every instrumented pool registers its tasks here; the thread starts with the first
task and stops when the last is removed.

Fork: a pool instrumented before ``os.fork()`` (built in gunicorn's master under
``--preload``) keeps its tasks in the child, but not the thread that ran them; without one the
child's leaks would never be reported. So the child starts its own thread at once when tasks
are registered. The parent's thread cannot be inside a task at the fork: each round of tasks
holds a lock that the fork takes first, so that no lock a task takes (the leak detector's, the
SDK's histograms') is left held in the child by a thread that is not there.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from time import monotonic

logger = logging.getLogger("telemetry")

Task = Callable[[], object]


class Worker:
    """Runs each registered task every ``interval`` seconds on a daemon thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._tasks: dict[int, weakref.WeakMethod[Task]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: Held by each round of tasks, and across os.fork() (see the module docstring);
        #: reentrant, for a task that forks.
        self._running = threading.RLock()

    def add(self, task: Task) -> int:
        """Register a task (a bound method: held weakly); returns a handle for :meth:`remove`.

        A task whose object is garbage-collected is dropped, so an instrumented pool that is
        never closed nor uninstrumented does not keep the thread running forever.
        """
        with self._lock:
            self._reset_after_fork()
            self._next_id += 1
            self._tasks[self._next_id] = weakref.WeakMethod(task)
            if self._thread is None or not self._thread.is_alive():
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="psycopg2_pool-telemetry",
                                                daemon=True)
                self._thread.start()
            return self._next_id

    def remove(self, handle: int) -> None:
        """Unregister a task; the thread stops when none is left (not waited for)."""
        with self._lock:
            self._tasks.pop(handle, None)
            if not self._tasks:
                self._wake.set()

    @property
    def running(self) -> bool:
        """True while the thread is alive (for tests)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for a stopping thread to end (for tests and clean shutdowns)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _reset_after_fork(self) -> None:
        if self._pid != os.getpid():  # threads do not survive fork: start afresh
            self._pid = os.getpid()
            self._thread = None
            self._wake = threading.Event()

    def _before_fork(self) -> None:
        self._running.acquire()  # waits for a round under way: at most one round's time

    def _after_fork_in_parent(self) -> None:
        self._running.release()

    def _after_fork_in_child(self) -> None:
        """Fresh locks (the parent's may be held by its threads, which are not here), and
        a thread of the child's own if tasks were registered before the fork."""
        self._lock = threading.Lock()
        self._running = threading.RLock()
        self._reset_after_fork()
        if self._tasks:
            self._thread = threading.Thread(target=self._run, name="psycopg2_pool-telemetry",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wake = self._wake
        while True:
            started = monotonic()
            with self._lock:
                tasks = []
                for handle, ref in list(self._tasks.items()):
                    task = ref()
                    if task is None:
                        del self._tasks[handle]
                    else:
                        tasks.append(task)
                if not tasks:
                    self._thread = None
                    return
            with self._running:
                for task in tasks:
                    try:
                        task()
                    except Exception:
                        logger.exception("telemetry background task %r failed", task)
            if wake.wait(max(0.0, self.interval - (monotonic() - started))):
                with self._lock:
                    if not self._tasks:
                        self._thread = None
                        return
                    wake.clear()


#: The process-wide worker.
WORKER = Worker()
os.register_at_fork(before=WORKER._before_fork, after_in_parent=WORKER._after_fork_in_parent,
                    after_in_child=WORKER._after_fork_in_child)
