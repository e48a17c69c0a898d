"""The request path: privacy admission, balancing, node calls, the DP release, commit.

Called by the HTTP handlers in ``app.py`` with an authenticated `Principal` and a parsed
`CompletionRequest`. One `Runtime` holds everything derived from one config generation
(auth, balancer, ledger, cache, overload limiter); a hot reload builds a new one and
in-flight requests finish on the one they started with.

Every answer released comes from exactly one of (DESIGN section 5, docs/privacy.md):

1. **a node-side mechanism** (``_single`` on a PHI node): the epsilon is reserved for the
   node's declared mechanism *before* the node is called, sent to the node, and the answer is
   released only if the node's report fits the reservation (``node_contract.check_report``);
   otherwise nothing is released, the reservation is refunded and the violation counted;
2. **consensus over public options** (``_consensus``): one node per hospital votes for an
   option, GNMax picks the winner, only the option's text is released;
3. **a Public node** (no patient data): nothing is reserved, the answer costs 0 and says why.

Order: validate -> cache (a hit re-releases a released answer, costs nothing) -> overload
limiter (bounded concurrency, 429) -> pick node(s) (pure) -> reserve (403 here, before any
node call) -> node call(s), failing over before anything is released -> check/aggregate ->
commit (durable) -> response. A reservation is released only if nothing reached the client.
A client found gone before a reservation (a slot granted late, a failover) is charged nothing
and no node is asked for it (`ClientGone`). A whole answer whose client left while its node
computed is still committed, and cached (a retry gets it for nothing): refunding it would make
the refund depend on the node's latency, which may depend on patient data, and give a client
free probes of it (docs/privacy.md, "Refunds").

**Streams** (`RequestPath.stream`, single-node answers only): the same order, but the node
call returns at the node's status and headers, so its privacy report (``X-FDP-Privacy-*``
headers) is checked before any of the answer is read or sent; a violation or failure still
fails over. Then, if the client is still connected, the reservation is committed (durable)
and only then may the first byte go out: once a byte reached the client the spend stands,
whatever happens next; a client gone before that is refunded (`ClientGone`). The overload
slot is held until the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from fdp_router.auth import Authenticator, Principal
from fdp_router.backends import BackendFailure, BackendPool, NodeReply, NodeStream
from fdp_router.balancers import Balancer, NodeView, PickContext
from fdp_router.cache import AnswerCache, cache_key
from fdp_router.config import (
    DataClass,
    HospitalNodeConfig,
    NodeMechanism,
    PrivacyConfig,
    RouterConfig,
    check_options,
)
from fdp_router.consensus import aggregate, vote_instruction
from fdp_router.errors import (
    BadGateway,
    ClientGone,
    ConsensusFailed,
    Forbidden,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    NoNodeAvailable,
    PrivacyBudgetExceeded,
)
from fdp_router.metrics import Metrics
from fdp_router.node_contract import Purpose, SentPrivacy, check_report, check_stream_report
from fdp_router.overload import OverloadLimiter
from fdp_router.privacy import events
from fdp_router.privacy.api import (
    BudgetExceeded,
    Charge,
    InvalidPrivacyRequest,
    Ledger,
    LedgerUnavailable,
    Reservation,
    Scope,
)
from fdp_router.streaming import finish_reason, node_usage

log = logging.getLogger("fdp_router.request_path")

# Model names that mean "any node the department may use" (OpenAI SDKs require some model).
ANY_MODEL = frozenset({"", "default", "fdp-router"})
ROUTER_MODEL = "fdp-router"


@dataclass
class Runtime:
    """Everything built from one config generation."""

    config: RouterConfig
    generation: int
    authenticator: Authenticator
    balancer: Balancer
    ledger: Ledger
    cache: AnswerCache
    overload: OverloadLimiter
    query_hasher: Callable[[str], str]  # keyed hash of the query text for the audit record
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    hospital_remaining: dict[str, float] = field(default_factory=dict)


class CompletionRequest(NamedTuple):
    """One completion request, parsed. Immutable: this and the request path's other per-request
    values are NamedTuples, not frozen dataclasses, because a tuple builds about twice as fast."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    privacy_budget: float | None
    require_consensus: bool
    priority: int
    department: str | None
    request_id: str
    model: str | None = None
    options: tuple[str, ...] | None = None  # public candidate answers (consensus)
    candidate_set: str | None = None  # or a named set from the policy
    specialization: str | None = None  # only nodes listing it
    params: tuple[tuple[str, Any], ...] = ()  # OpenAI sampling fields passed to the node
    include_usage: bool = False  # a stream's stream_options.include_usage

    @property
    def logprobs(self) -> bool:
        for name, value in reversed(self.params):  # the last one, as dict(params) keeps
            if name == "logprobs":
                return value is True
        return False


class Released(NamedTuple):
    """What one request released, before it is wrapped for the client."""

    text: str
    node_ids: tuple[str, ...]
    epsilon: float
    delta: float
    remaining: float | None
    basis: str  # why this answer may be released, in one line
    consensus_reached: bool | None = None
    confidence: float | None = None
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None  # the node's token counts (Public nodes); None: estimate
    logprobs: Any = None  # the node's, when asked (Public nodes)


class Completion(NamedTuple):
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
    basis: str = ""
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None
    logprobs: Any = None

    def relayed(self, text: str, finish_reason: str, usage: dict[str, Any] | None) -> Completion:
        """A stream's summary once all of it was relayed: its text, finish reason and (a
        public node's) usage; no logprobs (a stream's are not kept). What ``_replace`` would
        build, without its per-call field mapping."""
        return Completion(
            text=text,
            node_ids=self.node_ids,
            epsilon=self.epsilon,
            delta=self.delta,
            remaining_budget=self.remaining_budget,
            cached=self.cached,
            consensus=self.consensus,
            consensus_reached=self.consensus_reached,
            confidence=self.confidence,
            processing_time=self.processing_time,
            basis=self.basis,
            finish_reason=finish_reason,
            usage=usage,
            logprobs=None,
        )

    def as_cache_value(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "node_ids": list(self.node_ids),
            "consensus": self.consensus,
            "consensus_reached": self.consensus_reached,
            "confidence": self.confidence,
            "basis": self.basis,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_cache(cls, hit: dict[str, Any], remaining: float | None, elapsed: float) -> Completion:
        """A re-release of a cached answer: costs nothing (post-processing)."""
        return cls(
            text=hit["text"],
            node_ids=tuple(hit["node_ids"]),
            epsilon=0.0,
            delta=0.0,
            remaining_budget=remaining,
            cached=True,
            consensus=hit["consensus"],
            consensus_reached=hit["consensus_reached"],
            confidence=hit["confidence"],
            processing_time=elapsed,
            basis=hit["basis"],
            finish_reason=hit.get("finish_reason", "stop"),
            usage=hit.get("usage"),
            logprobs=hit.get("logprobs"),
        )


class Cleared(NamedTuple):
    """One node's answer that may be released: its report checked, the reservation committed
    (`reservation` None for a Public node, which reserves nothing)."""

    node_id: str
    cfg: HospitalNodeConfig
    sent: SentPrivacy
    reply: NodeReply | NodeStream
    reservation: Reservation | None
    remaining: float | None


@dataclass(frozen=True, slots=True)
class StreamRelease:
    """A stream cleared for release. `completion` is the privacy summary (its `text` empty
    until the stream ends); `upstream` is the node's open stream (or its whole JSON answer in
    `upstream.data`), `cached` a cached answer instead. `public`: the node's token counts
    and logprobs may go to the client."""

    completion: Completion
    upstream: NodeStream | None
    cached: dict[str, Any] | None
    public: bool
    cache_key: tuple[str, str]
    # A `privacy` object in the node's stream -> the violation label if it contradicts the
    # report that cleared the answer (``node_contract.check_stream_report``).
    check_privacy: Callable[[Any], str | None] | None = None


class Requester(NamedTuple):
    """Who is charged for a request: the parts of a `Charge` that do not depend on the node."""

    user_id: str
    department: str
    query_hash: str
    request_id: str
    specialization: str | None = None  # routing: only nodes listing it

    def charge(self, hospitals: tuple[str, ...], event: events.Event) -> Charge:
        return Charge(
            user_id=self.user_id,
            department=self.department,
            hospitals=hospitals,
            event=event,
            query_hash=self.query_hash,
            request_id=self.request_id,
        )


def _budget_error(exc: BudgetExceeded) -> PrivacyBudgetExceeded:
    return PrivacyBudgetExceeded(
        str(exc),
        scope=exc.scope.value,
        requested=exc.requested,
        available=exc.available,
    )


def _invalid(exc: InvalidPrivacyRequest) -> InvalidRequest:
    return InvalidRequest(exc.field, exc.reason)


def canonical_request(req: CompletionRequest, options: tuple[str, ...] | None) -> str:
    """The exact request as canonical JSON: the cache key's content and the audit hash's input.
    Different conversations, or the same words in another case, are different requests."""
    return orjson.dumps(
        {
            "messages": req.messages,
            "model": req.model or "",
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "consensus": req.require_consensus,
            "options": list(options) if options is not None else None,
            "specialization": req.specialization,
            # Sampling fields count only when set: a request without them keeps its key.
            **({"params": dict(req.params)} if req.params else {}),
        },
        option=orjson.OPT_SORT_KEYS,
    ).decode()


def node_payload(req: CompletionRequest) -> dict[str, Any]:
    """What every node call of a request carries (the pool adds the model and privacy)."""
    payload: dict[str, Any] = {
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
    }
    for name, value in req.params:
        payload[name] = list(value) if isinstance(value, tuple) else value
    return payload


def sent_privacy(node: HospitalNodeConfig, epsilon: float, pcfg: PrivacyConfig) -> SentPrivacy:
    """What a node is told it may spend on one released answer."""
    p = node.privacy
    if p.data_class == DataClass.PUBLIC:
        return SentPrivacy(0.0, 0.0, NodeMechanism.NONE)
    delta = pcfg.delta if p.mechanism == NodeMechanism.GAUSSIAN else 0.0
    return SentPrivacy(epsilon, delta, p.mechanism)


async def _release(rt: Runtime, reservation_id: str) -> None:
    """Refund a reservation whose answer never reached the client. Never raises: a failed
    refund leaves the epsilon spent, which is the safe side."""
    try:
        await asyncio.shield(rt.ledger.release(reservation_id))
    except LedgerUnavailable as exc:  # the outage is logged once by ledger_health
        log.debug("refund failed: ledger unavailable; it stays spent", extra={"kind": exc.kind})
    except Exception:
        log.exception("releasing a reservation failed; it stays spent", extra={"reservation": reservation_id})


class RequestPath:
    """Stateless over a Runtime; one per app."""

    def __init__(self, pool: BackendPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics

    # --- the whole request --------------------------------------------------------------------

    def _may_query(self, who: Principal) -> None:
        if not who.may_query:  # roles gate the request path: an auditor reads, never queries
            self.metrics.child(self.metrics.access_violations, "role_not_allowed").inc()
            raise Forbidden(
                f"role(s) {sorted(who.roles)} may not run clinical queries: that needs the clinician "
                "or admin role (an auditor reads budgets and health details only)",
                reason="role_not_allowed",
            )

    async def complete(
        self,
        rt: Runtime,
        who: Principal,
        req: CompletionRequest,
        connected: Callable[[], bool] | None = None,
    ) -> Completion:
        """A whole answer. With `connected`, a client found gone before a reservation ends the
        request there (`ClientGone`: nothing charged, no node asked for no one). Once a node
        was asked, the answer is committed and cached whether or not its client is still there
        (module docstring: a refund must not depend on how long the node took)."""
        self._may_query(who)
        start = time.monotonic()
        department = self._department(who, req)
        epsilon = self._epsilon(rt, req)
        options = self._options(rt, req)
        canonical = canonical_request(req, options)
        key = cache_key(department, canonical)
        if req.logprobs and options is not None:
            raise InvalidRequest("logprobs", "a consensus releases an option's text only, no logprobs")
        hit = self._cached(rt, key)
        if hit is not None:
            remaining = await self._remaining(rt, who.user)
            return Completion.from_cache(hit, remaining, time.monotonic() - start)
        who_pays = Requester(
            who.user, department, rt.query_hasher(canonical), req.request_id, req.specialization
        )
        payload = node_payload(req)
        self.metrics.child(self.metrics.queue_depth).set(rt.overload.queue_depth + 1)
        async with rt.overload.slot(req.priority):
            self.metrics.child(self.metrics.queue_depth).set(rt.overload.queue_depth)
            if options is not None:
                out = await self._consensus(rt, who_pays, req.model, options, payload, connected)
            else:
                out = await self._single(rt, who_pays, req.model, epsilon, payload, connected)
        self.metrics.child(self.metrics.epsilon_spent, department).inc(out.epsilon)
        done = Completion(
            text=out.text,
            node_ids=out.node_ids,
            epsilon=out.epsilon,
            delta=out.delta,
            remaining_budget=out.remaining,
            cached=False,
            consensus=options is not None,
            consensus_reached=out.consensus_reached,
            confidence=out.confidence,
            processing_time=time.monotonic() - start,
            basis=out.basis,
            finish_reason=out.finish_reason,
            usage=out.usage,
            logprobs=out.logprobs,
        )
        rt.cache.put(key, done.as_cache_value())
        return done

    def _cached(self, rt: Runtime, key: tuple[str, str]) -> dict[str, Any] | None:
        hit = rt.cache.get(key)
        self.metrics.child(self.metrics.cache, "hit" if hit is not None else "miss").inc()
        self.metrics.child(self.metrics.cache_hit_ratio).set(rt.cache.stats.hit_ratio)
        return hit

    # --- a streamed answer --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def stream(
        self, rt: Runtime, who: Principal, req: CompletionRequest, connected: Callable[[], bool]
    ) -> AsyncIterator[StreamRelease]:
        """Clear one node's streamed answer for release (the module docstring says how):
        raises an `ApiError` before anything was sent, or `ClientGone` (refunded) when
        `connected()` is false at the last moment before the commit. Inside the block the
        spend is committed and the caller relays the stream; the node's stream and the
        overload-limiter slot are released on exit. A cached answer is re-released without a node."""
        self._may_query(who)
        start = time.monotonic()
        if req.require_consensus:
            raise InvalidRequest(
                "stream", "a consensus cannot stream: its answer is known only when every hospital has voted"
            )
        department = self._department(who, req)
        epsilon = self._epsilon(rt, req)
        self._options(rt, req)
        canonical = canonical_request(req, None)
        key = cache_key(department, canonical)
        hit = self._cached(rt, key)
        if hit is not None:
            done = Completion.from_cache(hit, await self._remaining(rt, who.user), time.monotonic() - start)
            # The cache keeps only what was released: its usage and logprobs may go out again.
            yield StreamRelease(done, None, hit, public=True, cache_key=key)
            return
        who_pays = Requester(
            who.user, department, rt.query_hasher(canonical), req.request_id, req.specialization
        )
        payload = {**node_payload(req), "stream": True}
        if req.include_usage:
            payload["stream_options"] = {"include_usage": True}
        self.metrics.child(self.metrics.queue_depth).set(rt.overload.queue_depth + 1)
        async with rt.overload.slot(req.priority):
            self.metrics.child(self.metrics.queue_depth).set(rt.overload.queue_depth)
            ok = await self._clear(rt, who_pays, req.model, epsilon, payload, connected)
            assert isinstance(ok.reply, NodeStream)
            try:
                out = self._released(ok, logprobs=req.logprobs)
                self.metrics.child(self.metrics.epsilon_spent, department).inc(out.epsilon)
                summary = Completion(
                    text=out.text,
                    node_ids=out.node_ids,
                    epsilon=out.epsilon,
                    delta=out.delta,
                    remaining_budget=out.remaining,
                    cached=False,
                    consensus=False,
                    consensus_reached=None,
                    confidence=None,
                    processing_time=time.monotonic() - start,
                    basis=out.basis,
                    finish_reason=out.finish_reason,
                    usage=out.usage,
                    logprobs=out.logprobs,
                )
                public = ok.reservation is None
                cleared = ok.reply.report

                def check_privacy(body: Any, ok: Cleared = ok) -> str | None:
                    violation = check_stream_report(ok.cfg.privacy, ok.sent, cleared, body)
                    if violation is None:
                        return None
                    self._violation(ok.node_id, violation.value)
                    return violation.value

                yield StreamRelease(
                    summary, ok.reply, None, public=public, cache_key=key, check_privacy=check_privacy
                )
            finally:
                await ok.reply.close()

    def remember(self, rt: Runtime, key: tuple[str, str], released: Completion) -> None:
        """Cache a streamed answer once all of it was relayed: a re-release costs nothing."""
        rt.cache.put(key, released.as_cache_value())

    # --- validation (all before anything is reserved) -----------------------------------------

    def _department(self, who: Principal, req: CompletionRequest) -> str:
        if req.department is not None and req.department != who.department:
            if not who.is_admin:
                raise Forbidden(
                    f"department: token is for {who.department!r}, request names {req.department!r}"
                )
            return req.department
        return who.department

    def _epsilon(self, rt: Runtime, req: CompletionRequest) -> float:
        if req.require_consensus and req.privacy_budget is not None:
            raise InvalidRequest(
                "privacy_budget",
                "a consensus is charged by its noise (consensus.sigma of the policy), not by a "
                "requested epsilon: leave privacy_budget out",
            )
        try:
            return events.check_epsilon(req.privacy_budget, rt.config.privacy)
        except InvalidPrivacyRequest as exc:
            raise _invalid(exc) from None

    def _options(self, rt: Runtime, req: CompletionRequest) -> tuple[str, ...] | None:
        """The public candidate answers of a consensus request, or None for a single answer."""
        if not req.require_consensus:
            if req.options is not None or req.candidate_set is not None:
                field_name = "options" if req.options is not None else "candidate_set"
                raise InvalidRequest(field_name, "only used with require_consensus: true")
            return None
        if req.options is not None and req.candidate_set is not None:
            raise InvalidRequest("options", "give options or candidate_set, not both")
        if req.candidate_set is not None:
            sets = rt.config.privacy.consensus.candidate_sets
            if req.candidate_set not in sets:
                known = ", ".join(sorted(sets)) or "none"
                raise InvalidRequest(
                    "candidate_set", f"unknown candidate set {req.candidate_set!r} (the policy has: {known})"
                )
            return sets[req.candidate_set]
        if req.options is None:
            raise InvalidRequest(
                "options",
                "a consensus releases only public candidate answers: give `options` (2 or more "
                "strings) or `candidate_set` (a set named in the privacy policy)",
            )
        try:
            return check_options(req.options)
        except ValueError as exc:
            field_name, _, reason = str(exc).partition(": ")
            raise InvalidRequest(field_name, reason) from None

    # --- node selection -----------------------------------------------------------------------

    def _serving(
        self, rt: Runtime, model: str | None, department: str
    ) -> list[tuple[NodeView, HospitalNodeConfig]]:
        """Nodes of the requested model (the routing default, or any model, for ANY_MODEL; a
        router-level alias: the nodes it lists) at or above the policy's minimum security
        level, with their configs. 404 if no configured node serves that model at all."""
        if model is None or model in ANY_MODEL:
            model = rt.config.routing.default_model
        any_model = model is None
        alias = rt.config.routing.model_aliases.get(model) if model is not None else None
        floor = rt.config.privacy.min_security_level.rank
        out = []
        for view in self.pool.views():
            cfg = self.pool.nodes[view.id].cfg
            wanted = any_model or (cfg.id in alias if alias is not None else cfg.model == model)
            if wanted and cfg.security_level.rank >= floor:
                out.append((view, cfg))
        if not out and not any_model:
            raise ModelNotFound(f"The model {model!r} does not exist or you do not have access to it.")
        return out

    def models(self, rt: Runtime, department: str) -> list[dict[str, Any]]:
        """What GET /v1/models lists for a department: every node model and router-level alias
        with at least one node the department may use (at or above the policy's security
        level), and ``fdp-router`` (any of them), with what each is made of."""
        floor = rt.config.privacy.min_security_level.rank
        usable = [
            st.cfg
            for st in self.pool.nodes.values()
            if (not st.cfg.departments or department in st.cfg.departments)
            and st.cfg.security_level.rank >= floor
        ]
        groups: dict[str, list[HospitalNodeConfig]] = {}
        for cfg in usable:
            groups.setdefault(cfg.model, []).append(cfg)
        aliases = rt.config.routing.model_aliases
        for alias, members in aliases.items():
            nodes = [c for c in usable if c.id in members]
            if nodes:
                groups[alias] = nodes
        if usable:
            groups[ROUTER_MODEL] = usable

        def describe(name: str, nodes: list[HospitalNodeConfig]) -> dict[str, Any]:
            classes = sorted({c.privacy.data_class.value for c in nodes})
            return {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "fdp-router",
                "fdp": {
                    "kind": "router"
                    if name == ROUTER_MODEL
                    else "alias"
                    if name in aliases
                    else "node_model",
                    "data_classes": classes,
                    "mechanisms": sorted({c.privacy.mechanism.value for c in nodes if c.privacy.releasable}),
                    "hospitals": len({c.hospital for c in nodes}),
                    "nodes": len(nodes),
                    "releasable": any(c.privacy.releasable for c in nodes),
                    "streaming": True,
                },
            }

        return [describe(name, groups[name]) for name in sorted(groups)]

    def _ctx(self, rt: Runtime, who: Requester, epsilon: float, **kw: Any) -> PickContext:
        return PickContext(
            department=who.department,
            epsilon=epsilon,
            hospital_remaining=rt.hospital_remaining,
            specialization=who.specialization,
            **kw,
        )

    def _no_node(self, serving: list[tuple[NodeView, HospitalNodeConfig]], who: Requester) -> NoNodeAvailable:
        department = who.department
        allowed = [v for v, _ in serving if v.allows(department)]
        if not allowed:
            return NoNodeAvailable(f"no hospital node is configured for department {department!r}")
        if who.specialization is not None:
            allowed = [v for v in allowed if v.serves(who.specialization)]
            if not allowed:
                return NoNodeAvailable(
                    f"no node for department {department!r} lists specialization {who.specialization!r}"
                )
        return NoNodeAvailable(
            f"no healthy node for department {department!r} ({len(allowed)} configured, all down)"
        )

    # --- one node's answer (a node-side mechanism, or a Public node) --------------------------

    async def _single(
        self,
        rt: Runtime,
        who: Requester,
        model: str | None,
        epsilon: float,
        payload: dict[str, Any],
        connected: Callable[[], bool] | None = None,
    ) -> Released:
        ok = await self._clear(rt, who, model, epsilon, payload, connected)
        return self._released(ok, logprobs=payload.get("logprobs") is True)

    async def _clear(
        self,
        rt: Runtime,
        who: Requester,
        model: str | None,
        epsilon: float,
        payload: dict[str, Any],
        connected: Callable[[], bool] | None = None,
    ) -> Cleared:
        """Pick a node, reserve, call it, check its report, commit; fail over before anything is
        released. For a stream (``payload`` has ``stream: true``) the node call returns at its
        headers. With `connected`, every attempt (a reservation and a node call) happens only
        while `connected()` is true, and a stream's commit too (else `ClientGone`, refunded):
        a client that left is charged nothing new and no node is asked again for it. The caller
        closes a returned stream."""
        serving = self._serving(rt, model, who.department)
        # A PHI node without a mechanism is never used for a release.
        usable = [(v, c) for v, c in serving if c.privacy.releasable]
        if serving and not usable and any(v.allows(who.department) for v, _ in serving):
            raise Forbidden(
                "no node serving this request runs a DP mechanism: its answers come from patient data "
                "(dataClass PHI) with mechanism None, so they are never released; nothing was charged",
                reason="no_dp_mechanism",
            )
        views = [v for v, _ in usable]
        configs = {c.id: c for _, c in usable}
        tried: set[str] = set()
        refused_hospitals: set[str] = set()
        last_budget: BudgetExceeded | None = None
        last_failure: BackendFailure | None = None
        reservation: Reservation | None = None
        attempts = 0
        streaming = payload.get("stream") is True
        try:
            while attempts < rt.config.routing.max_attempts:
                if connected is not None and not connected():
                    raise ClientGone  # a failover, or a slot granted, after the client left
                ctx = self._ctx(
                    rt,
                    who,
                    epsilon,
                    exclude=frozenset(tried),
                    exclude_hospitals=frozenset(refused_hospitals),
                )
                node = rt.balancer.pick(views, ctx)
                if node is None:
                    break
                cfg = configs[node.id]
                sent = sent_privacy(cfg, epsilon, rt.config.privacy)
                if reservation is not None:
                    # Failover: the first reservation released nothing; refund it.
                    await _release(rt, reservation.id)
                    reservation = None
                if cfg.privacy.data_class == DataClass.PHI:
                    try:
                        reservation = await self._reserve(rt, who, node, sent)
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
                    reply: NodeReply | NodeStream
                    if streaming:
                        reply = await self.pool.open_stream(node.id, payload, sent)
                    else:
                        reply = await self.pool.chat(node.id, payload, sent)
                except BackendFailure as exc:
                    if exc.client_error:
                        raise self._refused(exc) from None
                    last_failure = exc
                    tried.add(node.id)
                    log.warning("backend call failed", extra={"node": node.id, "error": str(exc)})
                    if not exc.retryable:
                        break
                    continue
                try:
                    violation = check_report(cfg.privacy, sent, reply.report)
                    if (
                        violation is None
                        and streaming
                        and reply.data is None  # a node that answered whole: a whole answer's rule
                        and connected is not None
                        and not connected()
                    ):
                        raise ClientGone
                    if violation is None and reservation is None:
                        # A Public node: nothing reserved, nothing to commit.
                        return Cleared(
                            node.id, cfg, sent, reply, None, await self._remaining(rt, who.user_id)
                        )
                    if violation is None and reservation is not None:
                        remaining = await self._commit(rt, reservation, (node.id,))
                        committed, reservation = reservation, None
                        return Cleared(node.id, cfg, sent, reply, committed, remaining)
                except BaseException:
                    if isinstance(reply, NodeStream):
                        await reply.close()
                    raise
                assert violation is not None
                if isinstance(reply, NodeStream):
                    await reply.close()
                self._violation(node.id, violation.value)
                tried.add(node.id)
                last_failure = BackendFailure(
                    node.id, f"privacy contract violation ({violation.value}); nothing was released"
                )
        finally:
            if reservation is not None:
                # Nothing reached the client (failure, violation, cancellation): refund.
                await _release(rt, reservation.id)
        if last_failure is not None:
            if last_failure.timeout:
                raise GatewayTimeout(f"hospital node timed out: {last_failure}")
            raise BadGateway(f"hospital node failed: {last_failure}")
        if last_budget is not None:
            raise _budget_error(last_budget)
        raise self._no_node(serving, who)

    def _released(self, ok: Cleared, *, logprobs: bool) -> Released:
        """What a cleared answer releases. A Public node's token counts, finish reason and (when
        asked) logprobs pass through; a PHI node's answer is released as its text and finish
        reason only: its report covers the text its mechanism produced, while its token counts
        may count context built from patient records and its logprobs are not DP outputs."""
        data = ok.reply.data if ok.reply.data is not None else {}
        choice = data["choices"][0] if data else {}
        text = str(choice["message"]["content"]) if data else ""
        finish = finish_reason(choice.get("finish_reason")) or "stop"
        if ok.reservation is None:
            return Released(
                text=text,
                node_ids=(ok.node_id,),
                epsilon=0.0,
                delta=0.0,
                remaining=ok.remaining,
                basis=f"public data: node {ok.node_id} holds no patient data (dataClass Public), 0 epsilon",
                finish_reason=finish,
                usage=node_usage(data.get("usage")),
                logprobs=choice.get("logprobs") if logprobs else None,
            )
        # The node's own `basis` text is not released: no mechanism covers what a node writes there.
        basis = f"node-side {ok.cfg.privacy.mechanism} mechanism at epsilon {ok.sent.epsilon:g}"
        return Released(
            text=text,
            node_ids=(ok.node_id,),
            epsilon=ok.reservation.epsilon,
            delta=ok.sent.delta,
            remaining=ok.remaining,
            basis=basis,
            finish_reason=finish,
        )

    def _refused(self, exc: BackendFailure) -> InvalidRequest:
        """A node's 400/422 for the client's input: the client's 400; nothing is charged."""
        reason = "the hospital node refused the request"
        if exc.code:
            reason += f" ({exc.code})"
        if exc.code == "question_not_supported":
            reason += ": this node answers only the questions its DP mechanism supports (docs/privacy.md)"
        return InvalidRequest("messages", reason + "; nothing was charged")

    def _violation(self, node_id: str, reason: str) -> None:
        self.metrics.child(self.metrics.contract_violations, node_id, reason).inc()
        log.error(
            "node broke the privacy contract; answer not released, reservation refunded",
            extra={"node": node_id, "violation": reason},
        )

    # --- consensus over public options --------------------------------------------------------

    async def _consensus(
        self,
        rt: Runtime,
        who: Requester,
        model: str | None,
        options: tuple[str, ...],
        payload: dict[str, Any],
        connected: Callable[[], bool] | None = None,
    ) -> Released:
        ccfg = rt.config.privacy.consensus
        serving = self._serving(rt, model, who.department)
        views = [v for v, _ in serving]
        nodes = rt.balancer.pick_many(views, self._ctx(rt, who, 0.0), ccfg.nodes)
        if len(nodes) < ccfg.min_answers:
            self.metrics.consensus.labels("too_few_nodes").inc()
            raise ConsensusFailed(
                f"consensus needs {ccfg.min_answers} hospitals but only {len(nodes)} distinct hospital(s) "
                f"with a healthy node serve department {who.department!r}; nothing was charged",
                needed=ccfg.min_answers,
                available_hospitals=len(nodes),
            )
        hospitals = tuple(sorted(n.hospital for n in nodes))
        sent = SentPrivacy(0.0, 0.0, NodeMechanism.NONE, Purpose.CONSENSUS_VOTE, options)
        vote_payload = {
            **payload,
            "messages": [{"role": "system", "content": vote_instruction(options)}, *payload["messages"]],
            "fdp_options": list(options),
        }
        if connected is not None and not connected():
            raise ClientGone  # the slot was granted after the client left
        try:
            reservation = await rt.ledger.reserve(
                who.charge(hospitals, events.gnmax_event(ccfg.sigma)), tuple(sorted(n.id for n in nodes))
            )
        except BudgetExceeded as exc:
            self.metrics.budget_rejections.labels(exc.scope.value).inc()
            raise _budget_error(exc) from None
        except InvalidPrivacyRequest as exc:
            raise _invalid(exc) from None
        committed = False
        try:
            results = await asyncio.gather(
                *(self.pool.chat(n.id, vote_payload, sent) for n in nodes), return_exceptions=True
            )
            answers: list[str] = []
            answered: list[str] = []
            for n, r in zip(nodes, results, strict=True):
                if isinstance(r, BaseException):
                    if not isinstance(r, BackendFailure):
                        raise r
                    if r.client_error:  # the node would not vote on this question: an abstention
                        answers.append("")
                        answered.append(n.id)
                        continue
                    log.warning("consensus member failed", extra={"node": n.id, "error": str(r)})
                    continue
                answers.append(r.text)
                answered.append(n.id)
            if len(answers) < ccfg.min_answers:
                self.metrics.consensus.labels("too_few_answers").inc()
                raise ConsensusFailed(
                    f"only {len(answers)} of {len(nodes)} hospitals answered, {ccfg.min_answers} needed; "
                    "nothing was charged",
                    needed=ccfg.min_answers,
                    answers=len(answers),
                )
            result = aggregate(answers, options, ccfg.sigma)
            remaining = await self._commit(rt, reservation, tuple(answered))
            committed = True
        finally:
            if not committed:
                await _release(rt, reservation.id)
        self.metrics.consensus.labels("reached" if result.consensus_reached else "not_reached").inc()
        return Released(
            text=result.answer,
            node_ids=tuple(answered),
            epsilon=reservation.epsilon,
            delta=reservation.delta,
            remaining=remaining,
            basis=(
                f"GNMax consensus over {len(options)} public options: one vote from each of "
                f"{len(hospitals)} hospitals, discrete Gaussian noise sigma {ccfg.sigma:g}"
            ),
            consensus_reached=result.consensus_reached,
            confidence=result.confidence,
        )

    # --- ledger -------------------------------------------------------------------------------

    async def _reserve(self, rt: Runtime, who: Requester, node: NodeView, sent: SentPrivacy) -> Reservation:
        try:
            event = events.event_for_node(sent.mechanism, sent.epsilon, rt.config.privacy.delta)
            return await rt.ledger.reserve(who.charge((node.hospital,), event), (node.id,))
        except InvalidPrivacyRequest as exc:
            raise _invalid(exc) from None

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
        except LedgerUnavailable:  # the answer is already released; the outage is logged once
            return None
        except Exception:  # the answer is already released; a failed read must not fail it
            log.exception("budget read failed")
            return None
        return st.remaining_epsilon
