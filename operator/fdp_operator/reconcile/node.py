"""Reconcile one HospitalNode: probe it when due, record the result, announce transitions.

Called by the node timer in handlers.py every tick; a probe runs only when the node's
``healthCheck.intervalSeconds`` has passed since the last one (kept in the per-object
memo). ``Ready`` flips to False after ``failureThreshold`` consecutive failures, which is
also when routers drop the node from their config (see reconcile/router.node_is_healthy),
and flips back on the first success. Returns the Event to post on a transition.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from fdp_operator import conditions as cond
from fdp_operator.apply import write_status
from fdp_operator.kube import Kube
from fdp_operator.models import HospitalNodeSpec, SpecError, parse_node
from fdp_operator.probe import ProbeResult, probe, ssl_context

KIND = "HospitalNode"


@dataclass(frozen=True)
class NodeEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class NodeOutcome:
    status: dict[str, Any]
    event: NodeEvent | None


def _secret_value(secret: dict[str, Any] | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


_SSL_CACHE: dict[tuple[str, str, str, bool], tuple[float, ssl.SSLContext]] = {}
SSL_CACHE_SECONDS = 60.0


async def cached_ssl_context(kube: Kube, namespace: str, spec: HospitalNodeSpec) -> ssl.SSLContext:
    """``node_ssl_context`` reused for a minute: nodes sharing Secrets share one context (and
    connection pool key), and the API server is not asked for the Secrets on every probe.
    A rotated Secret is picked up within ``SSL_CACHE_SECONDS``."""
    key = (
        namespace,
        spec.tls.ca_secret_ref.name if spec.tls.ca_secret_ref else "",
        spec.tls.client_cert_secret_ref.name if spec.tls.client_cert_secret_ref else "",
        spec.tls.insecure_skip_verify,
    )
    now = time.monotonic()
    hit = _SSL_CACHE.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    ctx = await node_ssl_context(kube, namespace, spec)
    _SSL_CACHE[key] = (now + SSL_CACHE_SECONDS, ctx)
    return ctx


async def node_ssl_context(kube: Kube, namespace: str, spec: HospitalNodeSpec) -> ssl.SSLContext:
    """The mTLS context from the node's Secret references (missing Secrets raise ValueError)."""
    ca = cert = key = None
    if spec.tls.ca_secret_ref:
        secret = await kube.get("Secret", namespace, spec.tls.ca_secret_ref.name)
        ca = _secret_value(secret, "ca.crt")
        if ca is None:
            raise ValueError(f"Secret '{spec.tls.ca_secret_ref.name}' (tls.caSecretRef) has no ca.crt")
    if spec.tls.client_cert_secret_ref:
        secret = await kube.get("Secret", namespace, spec.tls.client_cert_secret_ref.name)
        cert, key = _secret_value(secret, "tls.crt"), _secret_value(secret, "tls.key")
        if cert is None or key is None:
            raise ValueError(
                f"Secret '{spec.tls.client_cert_secret_ref.name}' (tls.clientCertSecretRef) "
                "needs tls.crt and tls.key"
            )
    return ssl_context(ca, cert, key, spec.tls.insecure_skip_verify)


def node_conditions(failures: int, threshold: int, probed: bool, error: str | None) -> list[cond.Condition]:
    if not probed:
        return cond.initial_conditions("waiting for the first health probe")
    if failures >= threshold:
        verdict = cond.Verdict(
            cond.Reason.PROBE_FAILED,
            f"{failures} consecutive failed probes (threshold {threshold}): {error}; "
            "removed from every router's config",
            True,
        )
        return cond.summary(verdict, "")
    msg = "health probe succeeded"
    if failures:
        msg = f"{failures} failed probe(s) in a row (threshold {threshold}): {error}"
    return cond.summary(None, msg)


def next_status(
    old: Mapping[str, Any],
    spec: HospitalNodeSpec,
    result: ProbeResult,
    now: datetime,
    generation: int,
    used_by: Sequence[str],
) -> dict[str, Any]:
    """Pure: the status after one probe result."""
    failures = 0 if result.ok else int(old.get("consecutiveFailures", 0) or 0) + 1
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "lastProbeTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "consecutiveFailures": failures,
        "usedBy": sorted(used_by),
    }
    latency = result.latency_ms if result.ok else old.get("latencyMs")
    if latency is not None:
        status["latencyMs"] = latency
    if result.error:
        status["lastError"] = result.error
    threshold = spec.health_check.failure_threshold
    status["conditions"] = cond.merge(
        old.get("conditions"), node_conditions(failures, threshold, True, result.error), now, generation
    )
    return status


def transition_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> NodeEvent | None:
    was = cond.is_true(old.get("conditions"), "Ready")
    now_ready = cond.is_true(new.get("conditions"), "Ready")
    had_status = any(c.get("type") == "Ready" for c in old.get("conditions") or [])
    if now_ready and not was:
        reason = "NodeRecovered" if had_status and old.get("lastProbeTime") else "NodeReady"
        return NodeEvent("Normal", reason, "health probe succeeded; node is in the routers' config")
    if was and not now_ready:
        return NodeEvent("Warning", "NodeUnreachable", str(new.get("lastError", "probe failed")))
    return None


async def reconcile_node(
    kube: Kube,
    session: aiohttp.ClientSession,
    body: Mapping[str, Any],
    now: datetime,
    used_by: Sequence[str],
) -> NodeOutcome:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation", 1))
    old = dict(body.get("status") or {})
    try:
        node = parse_node(dict(body))
    except SpecError as exc:
        status = {
            **old,
            "observedGeneration": gen,
            "conditions": cond.merge(
                old.get("conditions"),
                cond.summary(cond.Verdict(cond.Reason.INVALID_SPEC, str(exc), True), ""),
                now,
                gen,
            ),
        }
        await write_status(kube, KIND, ns, name, old, status)
        return NodeOutcome(status, None)
    spec = node.spec
    try:
        ctx = await cached_ssl_context(kube, ns, spec)
    except ValueError as exc:
        result = ProbeResult(False, None, str(exc))
    else:
        result = await probe(
            session,
            spec.endpoint + spec.health_check.path,
            timeout_s=spec.health_check.timeout_seconds,
            ctx=ctx,
            server_name=spec.tls.server_name,
        )
    status = next_status(old, spec, result, now, gen, used_by)
    await write_status(kube, KIND, ns, name, old, status)
    return NodeOutcome(status, transition_event(old, status))
