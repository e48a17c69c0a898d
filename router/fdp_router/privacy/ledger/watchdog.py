"""Router-side deadlines on database calls: abort a call that outlives its bound.

A frozen database server (SIGSTOP, a paused VM, a stalled disk behind it) cannot enforce its
own ``statement_timeout``, and the kernel keeps acknowledging its TCP traffic, so neither
libpq nor the network ever notices: a blocking call waits forever. The ledger's database calls
therefore run inside ``Watchdog.guard(seconds, abort)``; one thread per watchdog sleeps until
the earliest deadline and calls ``abort`` of every guard still running past it. ``abort`` is
the driver's: PostgreSQL shuts the connection's socket down (the blocked call fails at once
and the connection is replaced), SQLite calls ``Connection.interrupt()``.

Cost on the hot path: two lock round trips per guarded call; the thread wakes only when a
deadline passes (or when the first guard after an idle period arrives).

Used by ``core.py`` (one watchdog per ledger driver).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Guard:
    deadline: float
    abort: Callable[[], None]
    fired: bool = False  # the call was aborted by the watchdog (it timed out)


class Watchdog:
    def __init__(self, name: str = "fdp-ledger-watchdog") -> None:
        self._name = name
        # A plain lock (entered from C, on every guarded call) under the watchdog's condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._guards: dict[int, Guard] = {}
        self._ids = itertools.count()
        self._wake_at = float("inf")  # when the thread will next look (inf: idle)
        self._thread: threading.Thread | None = None
        self._stopped = False

    def guard(self, seconds: float, abort: Callable[[], None]) -> _Guarded:
        """A context manager: the calls inside it are aborted (`abort`) once `seconds` have
        passed; it yields the `Guard`, whose ``fired`` says whether that happened."""
        return _Guarded(self, Guard(time.monotonic() + seconds, abort))

    def _add(self, g: Guard) -> int:
        key = next(self._ids)
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._guards[key] = g
            if g.deadline < self._wake_at:
                self._cond.notify()
        return key

    def _remove(self, key: int) -> None:
        with self._lock:  # after this, abort() is never called: the caller may free its handle
            self._guards.pop(key, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for key, g in list(self._guards.items()):
                    if g.deadline <= now:
                        del self._guards[key]
                        g.fired = True
                        try:
                            g.abort()
                        except Exception:
                            log.exception("ledger watchdog: aborting a call failed")
                self._wake_at = min((g.deadline for g in self._guards.values()), default=float("inf"))
                self._cond.wait(None if self._wake_at == float("inf") else max(0.0, self._wake_at - now))


class _Guarded:
    """`Watchdog.guard`'s context manager: a class, not a generator-based
    contextlib.contextmanager (which costs several times more, and every ledger transaction
    and read runs inside one)."""

    __slots__ = ("_dog", "_guard", "_key")

    def __init__(self, dog: Watchdog, guard: Guard) -> None:
        self._dog = dog
        self._guard = guard
        self._key = -1

    def __enter__(self) -> Guard:
        self._key = self._dog._add(self._guard)
        return self._guard

    def __exit__(self, *exc: object) -> None:
        self._dog._remove(self._key)
