"""The request path: privacy admission, balancing, backend calls, consensus, commit.

Called by the HTTP handlers in ``app.py`` with an authenticated `Principal` and a parsed
request. One `Runtime` holds everything derived from one config generation (auth,
balancer, ledger, cache, admission); a hot reload builds a new one and in-flight requests
finish on the one they started with.

Order, per DESIGN section 2 and 5: validate -> cache (a hit re-releases a released answer,
costs nothing) -> admission (bounded concurrency, 429) -> pick node(s) (pure) -> reserve
epsilon atomically in the ledger (403 here, before any backend call) -> backend call(s),
failing over before anything is released -> consensus -> commit (durable) -> response.
A reservation is released only if nothing reached the client, so nothing is charged for a
failed request and a request is never charged twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fdp_router.auth import Authenticator, Principal
from fdp_router.backends import BackendFailure, BackendPool
from fdp_router.balancers import Balancer, NodeView, PickContext
from fdp_router.cache import AnswerCache, cache_key
from fdp_router.config import RouterConfig
from fdp_router.consensus import aggregate
from fdp_router.errors import (
    BadGateway,
    ConsensusFailed,
    Forbidden,
    GatewayTimeout,
    InvalidRequest,
    NoNodeAvailable,
    PrivacyBudgetExceeded,
)
from fdp_router.metrics import Metrics
from fdp_router.overload import AdmissionController
from fdp_router.privacy import events
from fdp_router.privacy.api import (
    BudgetExceeded,
    Charge,
    InvalidPrivacyRequest,
    Ledger,
    Reservation,
    Scope,
)

log = logging.getLogger("fdp_router.service")


@dataclass
class Runtime:
    """Everything built from one config generation."""

    config: RouterConfig
    generation: int
    authenticator: Authenticator
    balancer: Balancer
    ledger: Ledger
    cache: AnswerCache
    admission: AdmissionController
    query_hasher: Callable[[str], str]  # keyed hash of the query text for the audit record
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    hospital_remaining: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Completion:
    """What one request released (or re-released from the cache)."""

    text: str
    node_ids: tuple[str, ...]
    epsilon: float
    delta: float
    remaining_budget: float | None
    cached: bool
    consensus: bool
    consensus_reached: bool | None
    confidence: float | None
    processing_time: float
    guarantee: str = ""

    def as_cache_value(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "node_ids": list(self.node_ids),
            "consensus": self.consensus,
            "consensus_reached": self.consensus_reached,
            "confidence": self.confidence,
        }


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    privacy_budget: float | None
    require_consensus: bool
    priority: int
    department: str | None
    request_id: str


def _budget_error(exc: BudgetExceeded) -> PrivacyBudgetExceeded:
    return PrivacyBudgetExceeded(
        str(exc),
        scope=exc.scope.value,
        requested=exc.requested,
        available=exc.available,
    )


async def _release(rt: Runtime, reservation_id: str) -> None:
    """Refund a reservation whose answer never reached the client. Never raises: a failed
    refund leaves the epsilon spent, which is the safe side."""
    try:
        await asyncio.shield(rt.ledger.release(reservation_id))
    except Exception:
        log.exception("releasing a reservation failed; it stays spent", extra={"reservation": reservation_id})


# (text, node ids, reservation, consensus_reached, confidence, remaining user budget)
_Released = tuple[str, tuple[str, ...], Reservation, bool | None, float | None, float | None]


class RequestPath:
    """Stateless over a Runtime; one per app."""

    def __init__(self, pool: BackendPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics

    async def complete(self, rt: Runtime, who: Principal, req: CompletionRequest) -> Completion:
        start = time.monotonic()
        department = who.department
        if req.department is not None and req.department != who.department:
            if not who.is_admin:
                raise Forbidden(
                    f"department: token is for {who.department!r}, request names {req.department!r}"
                )
            department = req.department
        event, epsilon_hint = self._event(rt, req)
        prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in req.messages)
        key = cache_key(
            department,
            prompt_text,
            {
                "max_tokens": req.max_tokens,
                "temperature": req.temperature,
                "consensus": req.require_consensus,
            },
        )
        hit = rt.cache.get(key)
        self.metrics.child(self.metrics.cache, "hit" if hit is not None else "miss").inc()
        self.metrics.cache_hit_ratio.set(rt.cache.stats.hit_ratio)
        if hit is not None:
            remaining = await self._remaining(rt, who.user)
            return Completion(
                text=hit["text"],
                node_ids=tuple(hit["node_ids"]),
                epsilon=0.0,
                delta=0.0,
                remaining_budget=remaining,
                cached=True,
                consensus=hit["consensus"],
                consensus_reached=hit["consensus_reached"],
                confidence=hit["confidence"],
                processing_time=time.monotonic() - start,
            )
        charge_base = {
            "user_id": who.user,
            "department": department,
            "query_hash": rt.query_hasher(prompt_text),
            "request_id": req.request_id,
        }
        payload: dict[str, Any] = {
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        }
        self.metrics.queue_depth.set(rt.admission.queue_depth + 1)
        async with rt.admission.slot(req.priority):
            self.metrics.queue_depth.set(rt.admission.queue_depth)
            if req.require_consensus:
                out = await self._consensus(rt, department, event, epsilon_hint, charge_base, payload)
            else:
                out = await self._single(rt, department, event, epsilon_hint, charge_base, payload)
        text, nodes, res, reached, confidence, remaining = out
        self.metrics.child(self.metrics.epsilon_spent, department).inc(res.epsilon)
        done = Completion(
            text=text,
            node_ids=nodes,
            epsilon=res.epsilon,
            delta=res.delta,
            remaining_budget=remaining,
            cached=False,
            consensus=req.require_consensus,
            consensus_reached=reached,
            confidence=confidence,
            processing_time=time.monotonic() - start,
        )
        rt.cache.put(key, done.as_cache_value())
        return done

    def _event(self, rt: Runtime, req: CompletionRequest) -> tuple[object, float]:
        pcfg = rt.config.privacy
        try:
            if req.require_consensus:
                return events.gnmax_event(pcfg.consensus.sigma), 0.0
            eps = events.check_epsilon(req.privacy_budget, pcfg)
            return events.event_for_request(pcfg, req.privacy_budget), eps
        except InvalidPrivacyRequest as exc:
            raise InvalidRequest(exc.field, exc.reason) from None

    async def _commit(self, rt: Runtime, reservation: Reservation, nodes: tuple[str, ...]) -> float | None:
        """Commit (durable) and return the user's remaining budget. The spend was recorded at
        reservation, and the ledger reports the remaining budget from that same transaction
        (`Reservation.user_remaining_epsilon`), so no separate read is needed; a ledger that
        does not report it is read concurrently with the commit. Raises if the commit fails
        (the caller then refunds and releases nothing)."""
        if reservation.user_remaining_epsilon is not None:
            await rt.ledger.commit(reservation.id, nodes)
            return reservation.user_remaining_epsilon
        _, remaining = await asyncio.gather(
            rt.ledger.commit(reservation.id, nodes), self._remaining(rt, reservation.charge.user_id)
        )
        return remaining

    async def _remaining(self, rt: Runtime, user: str) -> float | None:
        try:
            st = await rt.ledger.budget(Scope.USER, user)
        except Exception:  # the answer is already released; a failed read must not fail it
            log.exception("budget read failed")
            return None
        return st.remaining_epsilon

    async def _reserve(
        self, rt: Runtime, base: dict[str, Any], hospitals: tuple[str, ...], event: object
    ) -> Reservation:
        try:
            return await rt.ledger.reserve(Charge(hospitals=hospitals, event=event, **base))
        except InvalidPrivacyRequest as exc:
            raise InvalidRequest(exc.field, exc.reason) from None

    def _ctx(self, rt: Runtime, department: str, epsilon: float, **kw: Any) -> PickContext:
        return PickContext(
            department=department, epsilon=epsilon, hospital_remaining=rt.hospital_remaining, **kw
        )

    def _no_node(self, rt: Runtime, department: str) -> NoNodeAvailable:
        views = self.pool.views()
        allowed = [v for v in views if v.allows(department)]
        if not allowed:
            return NoNodeAvailable(f"no hospital node is configured for department {department!r}")
        return NoNodeAvailable(
            f"no healthy node for department {department!r} ({len(allowed)} configured, all down)"
        )

    async def _single(
        self,
        rt: Runtime,
        department: str,
        event: object,
        epsilon: float,
        base: dict[str, Any],
        payload: dict[str, Any],
    ) -> _Released:
        tried: set[str] = set()
        refused_hospitals: set[str] = set()
        last_budget: BudgetExceeded | None = None
        last_failure: BackendFailure | None = None
        reservation: Reservation | None = None
        attempts = 0
        try:
            while attempts < rt.config.routing.max_attempts:
                node: NodeView | None = rt.balancer.pick(
                    self.pool.views(),
                    self._ctx(
                        rt,
                        department,
                        epsilon,
                        exclude=frozenset(tried),
                        exclude_hospitals=frozenset(refused_hospitals),
                    ),
                )
                if node is None:
                    break
                if reservation is not None and reservation.charge.hospitals != (node.hospital,):
                    # Failover to another hospital: the first released nothing, refund it.
                    await _release(rt, reservation.id)
                    reservation = None
                if reservation is None:
                    try:
                        reservation = await self._reserve(rt, base, (node.hospital,), event)
                    except BudgetExceeded as exc:
                        self.metrics.budget_rejections.labels(exc.scope.value).inc()
                        if exc.scope is Scope.HOSPITAL:
                            refused_hospitals.add(node.hospital)
                            rt.hospital_remaining[node.hospital] = exc.available
                            last_budget = exc
                            continue
                        raise _budget_error(exc) from None
                attempts += 1
                try:
                    data = await self.pool.chat(node.id, payload)
                except BackendFailure as exc:
                    last_failure = exc
                    tried.add(node.id)
                    log.warning("backend call failed", extra={"node": node.id, "error": str(exc)})
                    if not exc.retryable:
                        break
                    continue
                text = str(data["choices"][0]["message"]["content"])
                remaining = await self._commit(rt, reservation, (node.id,))
                res, reservation = reservation, None
                return text, (node.id,), res, None, None, remaining
        finally:
            if reservation is not None:
                # Nothing reached the client (failure, cancellation): refund.
                await _release(rt, reservation.id)
        if last_failure is not None:
            if last_failure.timeout:
                raise GatewayTimeout(f"hospital node timed out: {last_failure}")
            raise BadGateway(f"hospital node failed: {last_failure}")
        if last_budget is not None:
            raise _budget_error(last_budget)
        raise self._no_node(rt, department)

    async def _consensus(
        self,
        rt: Runtime,
        department: str,
        event: object,
        epsilon: float,
        base: dict[str, Any],
        payload: dict[str, Any],
    ) -> _Released:
        ccfg = rt.config.privacy.consensus
        nodes = rt.balancer.pick_many(self.pool.views(), self._ctx(rt, department, epsilon), ccfg.nodes)
        if len(nodes) < ccfg.min_answers:
            self.metrics.consensus.labels("too_few_nodes").inc()
            raise ConsensusFailed(
                f"consensus needs {ccfg.min_answers} answers but only {len(nodes)} healthy node(s) "
                f"serve department {department!r}; nothing was charged",
                needed=ccfg.min_answers,
                available_nodes=len(nodes),
            )
        hospitals = tuple(sorted({n.hospital for n in nodes}))
        try:
            reservation = await self._reserve(rt, base, hospitals, event)
        except BudgetExceeded as exc:
            self.metrics.budget_rejections.labels(exc.scope.value).inc()
            raise _budget_error(exc) from None
        committed = False
        try:
            results = await asyncio.gather(
                *(self.pool.chat(n.id, payload) for n in nodes), return_exceptions=True
            )
            answers: list[tuple[str, str]] = []
            for n, r in zip(nodes, results, strict=True):
                if isinstance(r, BaseException):
                    if not isinstance(r, BackendFailure):
                        raise r
                    log.warning("consensus member failed", extra={"node": n.id, "error": str(r)})
                    continue
                answers.append((n.id, str(r["choices"][0]["message"]["content"])))
            if len(answers) < ccfg.min_answers:
                self.metrics.consensus.labels("too_few_answers").inc()
                raise ConsensusFailed(
                    f"only {len(answers)} of {len(nodes)} nodes answered, {ccfg.min_answers} needed; "
                    "nothing was charged",
                    needed=ccfg.min_answers,
                    answers=len(answers),
                )
            result = aggregate(answers, ccfg.sigma)
            answered = tuple(a[0] for a in answers)
            remaining = await self._commit(rt, reservation, answered)
            committed = True
        finally:
            if not committed:
                await _release(rt, reservation.id)
        self.metrics.consensus.labels("reached" if result.consensus_reached else "not_reached").inc()
        return result.answer, answered, reservation, result.consensus_reached, result.confidence, remaining
