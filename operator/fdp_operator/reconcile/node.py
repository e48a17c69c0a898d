"""Reconcile one HospitalNode: probe it when due, record the result, announce transitions.

Called by the node's probe daemon in handlers.py (``node_prober``) once per
``healthCheck.intervalSeconds``, and at once after a spec change; every call probes.
``Ready`` flips to False after ``failureThreshold`` consecutive failures and back on the
first success. The routers do not wait for this: each router pod probes the node itself with
the same health check and threshold and sends it nothing while it fails (the node stays in
their config). Returns the Event to post on a transition.
"""

from __future__ import annotations

import asyncio
import base64
import json
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
from fdp_operator.models import HospitalNode, HospitalNodeSpec, SpecError, parse_node
from fdp_operator.probe import ProbeResult, probe, ssl_context
from fdp_operator.security import Refusal, node_secret_uses, refusals

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


def _secret_value(secret: Mapping[str, Any] | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


class SecretRefused(Exception):
    """A Secret the node names may not be used (security.py): the node is not probed."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class NodeCredentials:
    ctx: ssl.SSLContext
    headers: dict[str, str]


_CACHE: dict[tuple[Any, ...], tuple[float, NodeCredentials]] = {}
SSL_CACHE_SECONDS = 60.0


async def cached_credentials(kube: Kube, node: HospitalNode) -> NodeCredentials:
    """``node_credentials`` reused for a minute: nodes sharing Secrets share one context (and
    connection pool key), and the API server is not asked for the Secrets on every probe.
    A rotated (or no longer opted-in) Secret is picked up within ``SSL_CACHE_SECONDS``."""
    spec = node.spec
    key = (
        node.ref.namespace,
        tuple((u.name, u.keys) for u in node_secret_uses(node)),
        spec.tls.insecure_skip_verify,
    )
    now = time.monotonic()
    hit = _CACHE.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    creds = await node_credentials(kube, node)
    _CACHE[key] = (now + SSL_CACHE_SECONDS, creds)
    return creds


def _headers(spec: HospitalNodeSpec, secrets: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if spec.auth.headers_secret_ref:
        ref = spec.auth.headers_secret_ref
        try:
            extra = json.loads(_secret_value(secrets.get(ref.name), ref.key) or "")
        except ValueError:
            extra = None
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            raise ValueError(
                f"Secret '{ref.name}' key '{ref.key}' (auth.headersSecretRef) is not a JSON object of strings"
            )
        headers.update(extra)
    key_ref = spec.auth.api_key_secret_ref
    if key_ref is not None:
        headers["Authorization"] = (
            f"Bearer {(_secret_value(secrets.get(key_ref.name), key_ref.key) or '').strip()}"
        )
    return headers


async def node_credentials(kube: Kube, node: HospitalNode) -> NodeCredentials:
    """The mTLS context and request headers from the node's Secrets. SecretRefused if one is
    not opted in or missing; ValueError if one holds something unusable."""
    spec = node.spec
    uses = node_secret_uses(node)
    names = sorted({u.name for u in uses})
    found = await asyncio.gather(*(kube.get("Secret", node.ref.namespace, n) for n in names))
    secrets = dict(zip(names, found, strict=True))
    refused = refusals(uses, secrets)
    if refused:
        raise SecretRefused(refused[0])
    ca = _secret_value(secrets.get(spec.tls.ca_secret_ref.name), "ca.crt") if spec.tls.ca_secret_ref else None
    cert = key = None
    if spec.tls.client_cert_secret_ref:
        secret = secrets.get(spec.tls.client_cert_secret_ref.name)
        cert, key = _secret_value(secret, "tls.crt"), _secret_value(secret, "tls.key")
    return NodeCredentials(ssl_context(ca, cert, key, spec.tls.insecure_skip_verify), _headers(spec, secrets))


def node_conditions(failures: int, threshold: int, probed: bool, error: str | None) -> list[cond.Condition]:
    if not probed:
        return cond.initial_conditions("waiting for the first health probe")
    if failures >= threshold:
        verdict = cond.Verdict(
            cond.Reason.PROBE_FAILED,
            f"{failures} consecutive failed probes (threshold {threshold}): {error}; "
            "routers send it nothing until their own probes pass again",
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


def refused_status(
    old: Mapping[str, Any], refusal: Refusal, now: datetime, generation: int, used_by: Sequence[str]
) -> dict[str, Any]:
    """Pure: the status of a node whose Secret was refused (probe results kept as they were)."""
    status = {k: v for k, v in old.items() if k in ("lastProbeTime", "latencyMs", "consecutiveFailures")}
    status.update(observedGeneration=generation, usedBy=sorted(used_by), lastError=refusal.message)
    verdict = cond.Verdict(
        cond.Reason(refusal.reason), refusal.message + "; not probed, left out of every router", True
    )
    status["conditions"] = cond.merge(old.get("conditions"), cond.summary(verdict, ""), now, generation)
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
        creds = await cached_credentials(kube, node)
    except SecretRefused as exc:
        # not probed: the operator does not use a Secret its owner did not opt in either
        status = refused_status(old, exc.refusal, now, gen, used_by)
        await write_status(kube, KIND, ns, name, old, status)
        was_refused = any(
            c.get("type") == "Ready" and c.get("reason") == exc.refusal.reason
            for c in old.get("conditions") or []
        )
        event = None if was_refused else NodeEvent("Warning", exc.refusal.reason, exc.refusal.message)
        return NodeOutcome(status, event)
    except ValueError as exc:
        result = ProbeResult(False, None, str(exc))
    else:
        result = await probe(
            session,
            spec.endpoint + spec.health_check.path,
            timeout_s=spec.health_check.timeout_seconds,
            ctx=creds.ctx,
            server_name=spec.tls.server_name,
            method=spec.health_check.method,
            headers=creds.headers,
        )
    status = next_status(old, spec, result, now, gen, used_by)
    await write_status(kube, KIND, ns, name, old, status)
    return NodeOutcome(status, transition_event(old, status))
