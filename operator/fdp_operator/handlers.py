"""kopf wiring: which event calls which reconcile function. No logic of its own.

``build_registry(config, settings)`` is called by ``fdp-operator run`` (cli.py) and by the
in-process e2e test (kopf's ``KopfRunner``); nothing registers at import and nothing here
reads the environment. FederatedRouters and PrivacyPolicies reconcile on
create/update/resume and on a resync timer (nodes and policies change under a router without
touching it); each HospitalNode has a probe daemon. The operator's state (Kubernetes client,
probe session, per-object locks, pending pokes) is one ``Runtime`` in kopf's ``memo``, made at
start-up: two operators in one process share nothing. Reconciles of one object are
serialised by a per-object lock because kopf runs timers beside change handlers. kopf keeps
its bookkeeping in ``fdp.io/`` annotations, never in ``status`` (status is ours, and only ours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from fdp_operator import conditions as cond
from fdp_operator.kube import Kube, bearer_token, load_configuration
from fdp_operator.models import GROUP, VERSION, LabelSelector
from fdp_operator.reconcile.node import reconcile_node
from fdp_operator.reconcile.policy import reconcile_policy
from fdp_operator.reconcile.router import reconcile_router
from fdp_operator.render.names import ROUTER_LABEL
from fdp_operator.security import OperatorSettings

log = logging.getLogger("fdp_operator")


@dataclass(frozen=True)
class OperatorConfig:
    """The handlers' timers (``fdp-operator run --resync-seconds / --probe-tick-seconds``)."""

    #: routers and policies are reconciled at least this often
    resync_seconds: float = 10.0
    #: how often a node's probe daemon checks for a spec change between probes
    probe_tick_seconds: float = 1.0


@dataclass
class Runtime:
    """Everything the handlers share, kept in kopf's memo under ``MEMO_KEY`` (made at start-up)."""

    config: OperatorConfig
    settings: OperatorSettings
    kube: Kube
    probe_session: aiohttp.ClientSession
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: routers with a reconcile queued by ``poke_router`` (bursts coalesce)
    pending: set[tuple[str, str]] = field(default_factory=set)
    poke_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())


MEMO_KEY = "fdp"


def _rt(memo: kopf.Memo) -> Runtime:
    # kopf gives each object a shallow copy of the operator's memo: the Runtime is shared
    return memo[MEMO_KEY]  # type: ignore[no-any-return]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 4
    # Least privilege: no cluster-wide list/watch of CRDs and namespaces. The namespaces are
    # fixed at start-up and preflight checked the CRDs, so dynamic scanning buys nothing.
    settings.scanning.disabled = True


async def _start(memo: kopf.Memo, config: OperatorConfig, settings: OperatorSettings) -> None:
    log.info("allowed router image repositories: %s", ", ".join(settings.allowed_image_repositories))
    log.info(
        "allowed router placement: priority classes %s; toleration keys %s",
        "default" if settings.allowed_priority_classes is None else list(settings.allowed_priority_classes),
        "default" if settings.allowed_toleration_keys is None else list(settings.allowed_toleration_keys),
    )
    memo[MEMO_KEY] = Runtime(
        config=config,
        settings=settings,
        kube=await Kube.connect(),
        # force_close: a probe measures a fresh connection, and no idle TLS connections pile up.
        probe_session=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True)),
    )


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt = memo.pop(MEMO_KEY, None)
    if isinstance(rt, Runtime):
        # Stop the poked reconciles first: one still reading through the client while it closes
        # fails with "Connector is closed" (and its gathered reads outlive it as orphan tasks).
        for task in list(rt.poke_tasks):
            task.cancel()
        await asyncio.gather(*rt.poke_tasks, return_exceptions=True)
        await rt.kube.close()
        await rt.probe_session.close()


# ---------------------------------------------------------------- indexes (in memory)


@dataclass(frozen=True)
class RouterRef:
    """What the policy and node handlers need to know about a router, parsed once when indexed."""

    name: str
    #: None: the selector does not parse (the router's own status says so); selects nothing
    selector: LabelSelector | None
    policy: str


def router_refs(namespace: str, name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, RouterRef]:
    """namespace -> RouterRef: for usedBy lists and for poking the routers a change concerns."""
    try:
        selector: LabelSelector | None = LabelSelector.model_validate(spec.get("nodeSelector") or {})
    except ValueError:
        selector = None
    return {namespace: RouterRef(name, selector, str((spec.get("policyRef") or {}).get("name", "")))}


def _routers_selecting(
    index: kopf.Index[str, RouterRef], namespace: str, labels: Mapping[str, str]
) -> list[str]:
    return [
        r.name
        for r in index.get(namespace, [])
        if r.selector is not None and r.selector.matches(dict(labels))
    ]


def _routers_using(index: kopf.Index[str, RouterRef], namespace: str, policy: str) -> list[str]:
    return [r.name for r in index.get(namespace, []) if r.policy == policy]


# ---------------------------------------------------------------- FederatedRouter


async def _reconcile_router(rt: Runtime, namespace: str, name: str, uid: str) -> None:
    async with rt.lock(uid):
        # Read under the lock: a body from an earlier event (kopf's, or a poke queued
        # behind another reconcile) carries a stale status, and the rollout engine resumes
        # from status; deciding from a stale one would step a rollout back (flapping).
        body = await rt.kube.get("FederatedRouter", namespace, name)
        if body is None:
            return
        outcome = await reconcile_router(rt.kube, dict(body), _now(), rt.settings)
    for message in outcome.rendered.plan.events if outcome.rendered is not None else ():
        # rollout transitions (switched, promoted, aborted...) as Events on the router
        kopf.info(dict(body), reason="Rollout", message=message)  # type: ignore[arg-type]
    if outcome.requeue_after is not None and outcome.requeue_after < rt.config.resync_seconds:
        # The rollout engine (or a certificate) wants a look before the next resync.
        asyncio.get_running_loop().call_later(
            max(0.5, outcome.requeue_after), poke_router, rt, namespace, name
        )
    ready = next((c for c in outcome.status.get("conditions", []) if c["type"] == "Ready"), None)
    if outcome.written and ready is not None:
        log.info(
            "FederatedRouter %s/%s: Ready=%s (%s) %s",
            namespace,
            name,
            ready["status"],
            ready["reason"],
            ready["message"],
        )


def poke_router(rt: Runtime, namespace: str, name: str) -> None:
    """Reconcile a router soon (its Deployment, a node or its policy changed); bursts coalesce."""
    key = (namespace, name)
    if key in rt.pending:
        return
    rt.pending.add(key)
    task = asyncio.get_running_loop().create_task(_poked(rt, key))
    rt.poke_tasks.add(task)
    task.add_done_callback(rt.poke_tasks.discard)


async def _poked(rt: Runtime, key: tuple[str, str]) -> None:
    try:
        await asyncio.sleep(0.2)
        rt.pending.discard(key)
        body = await rt.kube.get("FederatedRouter", *key)
        if body is not None:
            await _reconcile_router(rt, *key, str(body["metadata"].get("uid", "")))
    except Exception:
        log.exception("reconciling FederatedRouter %s/%s after a change failed; the resync retries", *key)
    finally:
        rt.pending.discard(key)


async def router_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body.metadata
    await _reconcile_router(_rt(memo), meta.namespace or "", meta.name or "", meta.uid or "")


async def router_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Safety net and clock: certificate renewal time, anything a poke missed."""
    meta = body.metadata
    await _reconcile_router(_rt(memo), meta.namespace or "", meta.name or "", meta.uid or "")


async def router_deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A router's Deployment moved (became available, rolled): update the router's status now."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "FederatedRouter" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            poke_router(_rt(memo), body.metadata.namespace or "", ref["name"])


# ---------------------------------------------------------------- PrivacyPolicy


async def _reconcile_policy(rt: Runtime, body: kopf.Body, router_refs: kopf.Index[str, RouterRef]) -> None:
    meta = body.metadata
    used_by = _routers_using(router_refs, meta.namespace or "", meta.name or "")
    async with rt.lock(meta.uid or ""):
        await reconcile_policy(rt.kube, dict(body), used_by, _now())


def _poke_users(rt: Runtime, body: kopf.Body, router_refs: kopf.Index[str, RouterRef]) -> None:
    meta = body.metadata
    for router in _routers_using(router_refs, meta.namespace or "", meta.name or ""):
        poke_router(rt, meta.namespace or "", router)


async def policy_changed(
    body: kopf.Body, router_refs: kopf.Index[str, RouterRef], memo: kopf.Memo, **_: Any
) -> None:
    _poke_users(_rt(memo), body, router_refs)
    await _reconcile_policy(_rt(memo), body, router_refs)


async def policy_deleted(
    body: kopf.Body, router_refs: kopf.Index[str, RouterRef], memo: kopf.Memo, **_: Any
) -> None:
    _poke_users(_rt(memo), body, router_refs)


async def policy_resync(
    body: kopf.Body, router_refs: kopf.Index[str, RouterRef], memo: kopf.Memo, **_: Any
) -> None:
    await _reconcile_policy(_rt(memo), body, router_refs)


# ---------------------------------------------------------------- HospitalNode


async def node_created(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Ready=False + Reconciling=True at once, before the first probe."""
    if not (body.get("status") or {}).get("conditions"):
        gen = int(body.metadata.get("generation", 1))
        await _rt(memo).kube.patch_status(
            "HospitalNode",
            body.metadata.namespace or "",
            body.metadata.name or "",
            {
                "observedGeneration": gen,
                "conditions": cond.merge(
                    [], cond.initial_conditions("waiting for the first health probe"), _now(), gen
                ),
            },
        )


async def node_prober(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    router_refs: kopf.Index[str, RouterRef],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """One long-lived task per node: probe, record, sleep ``intervalSeconds`` (a spec change
    probes at once). ``body`` is kopf's live view of the latest object."""
    rt = _rt(memo)
    while not stopped:
        meta = body.metadata
        gen = int(meta.get("generation", 1))
        ns = meta.namespace or ""
        used_by = _routers_selecting(router_refs, ns, meta.labels or {})
        try:
            async with rt.lock(meta.uid or ""):
                outcome = await reconcile_node(rt.kube, rt.probe_session, dict(body), _now(), used_by)
        except Exception:
            log.exception("probing HospitalNode %s/%s failed; retrying", ns, meta.name)
        else:
            if outcome.event is not None:
                log.info(
                    "HospitalNode %s/%s: %s %s", ns, meta.name, outcome.event.reason, outcome.event.message
                )
                kopf.event(
                    body, type=outcome.event.type, reason=outcome.event.reason, message=outcome.event.message
                )
                for router in used_by:  # their NodesReady status now, not at the next resync
                    poke_router(rt, ns, router)
        interval = float(((body.spec.get("healthCheck") or {}).get("intervalSeconds")) or 10)
        deadline = asyncio.get_running_loop().time() + interval
        while not stopped and int(body.metadata.get("generation", 1)) == gen:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await stopped.wait(min(left, rt.config.probe_tick_seconds))


# ---------------------------------------------------------------- registration


def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: in-cluster ServiceAccount, else ``$KUBECONFIG`` as it is now."""
    cfg = load_configuration()
    scheme, token = bearer_token(cfg)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        trust_env=settings.networking.trust_env,
    )


def build_registry(config: OperatorConfig, settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A registry with every handler, its timers from ``config``: pass it to ``kopf.run`` or
    ``KopfRunner(..., registry=...)``. Handler ids are the function names (as before: kopf's
    progress annotations name them)."""
    reg = kopf.OperatorRegistry()
    # The same credentials as the operator's own client (kube.load_configuration): kopf's
    # login_via_client would read the kubeconfig path fixed when `kubernetes` was imported.
    kopf.on.login(registry=reg)(login)
    fr, pp, hn = (
        (GROUP, VERSION, "federatedrouters"),
        (GROUP, VERSION, "privacypolicies"),
        (GROUP, VERSION, "hospitalnodes"),
    )

    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        _configure(settings)
        await _start(memo, config, operator_settings)

    operator_settings = settings
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    kopf.index(*fr, registry=reg)(router_refs)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(*fr, registry=reg)(router_changed)
        on(*pp, registry=reg)(policy_changed)
    every = config.resync_seconds
    kopf.timer(*fr, interval=every, initial_delay=every, registry=reg)(router_resync)
    kopf.on.event("apps", "v1", "deployments", labels={ROUTER_LABEL: kopf.PRESENT}, registry=reg)(
        router_deployment_changed
    )
    kopf.on.delete(*pp, optional=True, registry=reg)(policy_deleted)
    kopf.timer(*pp, interval=every, initial_delay=every, registry=reg)(policy_resync)
    kopf.on.create(*hn, registry=reg)(node_created)
    kopf.daemon(*hn, cancellation_timeout=5, registry=reg)(node_prober)
    return reg
