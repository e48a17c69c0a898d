"""The privacy ledger's health as the router reports it: ``/readyz``, ``fdp_ledger_up``, the
ledger's latency and error metrics, and one log line per state change (not per request).

`LedgerHealth` learns the ledger's state two ways:

- every ledger operation reports its latency and outcome (`observe`, installed on the ledger
  by `attach`): a request that finds the ledger down flips the state at once;
- `run` (a task of ``app._lifecycle``) asks the ledger for a cheap durable write
  (``ledger.check()``) whenever no operation has said anything for ``ttl`` seconds (about a
  second), so an idle router notices a fault and a recovery too, and probes add no load.

``/readyz`` reads the cached `state` and never waits for the database: a router whose ledger
cannot record a spend is taken out of the Service (Kubernetes sends traffic to replicas whose
ledger works), while ``/healthz`` stays 200 so the pod is not restarted in a loop.

A ledger without ``set_observer`` (a test fake) is observed through its checks only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fdp_router.metrics import Metrics
from fdp_router.privacy.api import Ledger, LedgerUnavailable

log = logging.getLogger("fdp_router.ledger")

TTL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class LedgerState:
    up: bool
    kind: str | None = None  # why it is down (a LedgerUnavailable kind)
    detail: str = ""
    since: float = 0.0  # monotonic time of the last change
    checked: float = 0.0  # monotonic time of the last evidence (operation or check)

    def doc(self, now: float) -> dict[str, Any]:
        """For /readyz and /v1/health: no database message (it may name hosts or paths)."""
        return {
            "status": "up" if self.up else "unavailable",
            "reason": self.kind,
            "for_seconds": round(max(0.0, now - self.since), 3),
        }


class LedgerHealth:
    def __init__(
        self, metrics: Metrics, *, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._ttl = ttl
        self._clock = clock
        # The ledger was opened (its schema written) before the router started serving.
        self._up = True
        self._kind: str | None = None
        self._detail = ""
        self._since = self._checked = clock()
        self._attached: Ledger | None = None
        metrics.ledger_up.set(1)

    @property
    def state(self) -> LedgerState:
        return LedgerState(self._up, self._kind, self._detail, self._since, self._checked)

    @property
    def ttl(self) -> float:
        return self._ttl

    def attach(self, ledger: Ledger) -> None:
        """Install `observe` on this ledger (idempotent; a hot reload brings a new ledger)."""
        if ledger is self._attached:
            return
        setter = getattr(ledger, "set_observer", None)
        if callable(setter):
            setter(self.observe)
        self._attached = ledger

    def observe(self, op: str, seconds: float, error: LedgerUnavailable | None) -> None:
        """The ledger's observer: on the hot path (two calls per request), so cheap."""
        m = self._metrics
        m.child(m.ledger_latency, op).observe(seconds)
        now = self._clock()
        self._checked = now
        if error is None:
            if not self._up:
                self._change(now, up=True, kind=None, detail="")
            return
        m.child(m.ledger_errors, error.kind).inc()
        if self._up:
            self._change(now, up=False, kind=error.kind, detail=error.detail)
        else:  # still down: keep the latest reason
            self._kind, self._detail = error.kind, error.detail

    def _change(self, now: float, *, up: bool, kind: str | None, detail: str) -> None:
        """Up <-> down: the gauge and exactly one log line."""
        was_since = self._since
        self._up, self._kind, self._detail, self._since = up, kind, detail, now
        self._metrics.ledger_up.set(1 if up else 0)
        if up:
            log.info("ledger available again", extra={"unavailable_seconds": round(now - was_since, 3)})
        else:
            log.error(
                "ledger unavailable: requests that need a privacy reservation get 503 ledger_unavailable",
                extra={"kind": kind, "error": detail},
            )

    def stale(self) -> bool:
        return self._clock() - self._checked >= self._ttl

    async def check(self, ledger: Ledger) -> LedgerState:
        """Refresh the state with one ``ledger.check()`` unless it is fresher than ``ttl``.
        Bounded by the ledger's own deadline (``ledger.timeouts.operation_seconds``)."""
        self.attach(ledger)
        if not self.stale():
            return self.state
        reports_itself = callable(getattr(ledger, "set_observer", None))  # then observe() saw it
        start = time.perf_counter()
        error: LedgerUnavailable | None = None
        try:
            await ledger.check()
        except LedgerUnavailable as exc:
            error = exc
        if not reports_itself:
            self.observe("check", time.perf_counter() - start, error)
        return self.state

    async def run(self, current: Callable[[], Ledger | None]) -> None:
        """Keep the state fresh for as long as the app runs (cancelled at shutdown)."""
        while True:
            ledger = current()
            if ledger is not None:
                try:
                    await self.check(ledger)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a closed ledger during a reload, a bug: never stop checking
                    log.debug("ledger check failed", exc_info=True)
            await asyncio.sleep(self._ttl)


LEDGER_HEALTH = web.AppKey("ledger_health", LedgerHealth)  # set by app._lifecycle
