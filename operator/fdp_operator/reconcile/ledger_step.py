"""The ledger step of a FederatedRouter's reconcile: what the budget ledger needs to outlive pods.

- **SQLite**: the PersistentVolumeClaim ``<fr>-ledger`` is created once (``spec.ledger.sqlite``:
  size, storage class) and never changed afterwards (a claim's class is immutable; growing it
  is the storage class's business). With ``whenDeleted: Retain`` (the default) it has no
  owner, so deleting the FederatedRouter keeps the ledger and a router created again under
  the same name finds its budgets; ``Delete`` makes the router its owner. Only the owner
  reference follows the spec after creation.
- **Audit key**: without ``spec.ledger.auditKeySecretRef`` the operator creates
  ``<fr>-audit-key`` once (32 random bytes as ``<key-id> <64 hex>``, what
  ``fdp_router.privacy.audit.parse_keyring`` reads) without an owner, carrying the opt-in
  label, and never writes it again: deleting the router keeps the key that seals its audit
  trail. A Secret of that name that someone else made is used only if it carries the opt-in
  label (security.py), like any Secret a spec names.

Called by reconcile/router.py before the Deployments are applied (the pods mount both).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fdp_operator.apply import owned_by, with_retries
from fdp_operator.kube import ApiError, Kube
from fdp_operator.models import FederatedRouter
from fdp_operator.render import names
from fdp_operator.render.router import render_audit_key_secret, render_ledger_claim
from fdp_operator.security import Refusal, SecretUse, secret_refusal

AUDIT_KEY_ID = "k1"
KIND = "FederatedRouter"


@dataclass(frozen=True)
class LedgerState:
    claim: str | None = None  # the SQLite ledger's PersistentVolumeClaim
    claim_phase: str | None = None
    audit_key_secret: str = ""
    refusal: Refusal | None = None


async def _create_once(kube: Kube, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Create ``obj``; None if it already exists (created meanwhile: never overwritten)."""
    try:
        return await with_retries(lambda: kube.create(obj))
    except ApiError as exc:
        if exc.status == 409:
            return None
        raise


async def ensure_audit_key(kube: Kube, router: FederatedRouter) -> tuple[str, Refusal | None]:
    """The audit key Secret's name, and why it cannot be used (None: it can)."""
    ref = router.spec.ledger.audit_key_secret_ref
    if ref is not None:
        return ref.name, None  # a Secret the spec names: checked with the others
    ns, name = router.ref.namespace, names.audit_key_secret(router.ref.name)
    existing = await kube.get("Secret", ns, name)
    if existing is None:
        created = await _create_once(
            kube, render_audit_key_secret(router, AUDIT_KEY_ID, secrets.token_hex(32))
        )
        existing = created if created is not None else await kube.get("Secret", ns, name)
    use = SecretUse(
        name, "the audit key kept for spec.ledger (auditKeySecretRef unset)", (names.AUDIT_KEY_KEY,)
    )
    return name, secret_refusal(use, existing)


def _owner_reference(router: FederatedRouter) -> dict[str, Any]:
    stub = owned_by({"metadata": {}}, KIND, router.ref.name, router.ref.uid)
    ref: dict[str, Any] = stub["metadata"]["ownerReferences"][0]
    return ref


async def ensure_ledger_claim(kube: Kube, router: FederatedRouter) -> tuple[str | None, str | None]:
    """(claim name, phase) of the SQLite ledger's claim, created if absent; (None, None) for postgres."""
    if router.spec.ledger.backend != "sqlite":
        return None, None
    ns, name = router.ref.namespace, names.ledger_claim(router.ref.name)
    owned = router.spec.ledger.sqlite.when_deleted == "Delete"
    existing = await kube.get("PersistentVolumeClaim", ns, name)
    if existing is None:
        desired = render_ledger_claim(router)
        if owned:
            desired = owned_by(desired, KIND, router.ref.name, router.ref.uid)
        existing = await _create_once(kube, desired) or await kube.get("PersistentVolumeClaim", ns, name)
        return name, ((existing or {}).get("status") or {}).get("phase")
    refs = list((existing.get("metadata") or {}).get("ownerReferences") or [])
    ours = [r for r in refs if r.get("uid") == router.ref.uid]
    if owned and not ours:
        refs.append(_owner_reference(router))
    elif not owned and ours:
        refs = [r for r in refs if r.get("uid") != router.ref.uid]
    else:
        return name, (existing.get("status") or {}).get("phase")
    await with_retries(
        lambda: kube.patch("PersistentVolumeClaim", ns, name, {"metadata": {"ownerReferences": refs}})
    )
    return name, (existing.get("status") or {}).get("phase")


async def ensure_ledger(kube: Kube, router: FederatedRouter) -> LedgerState:
    claim, phase = await ensure_ledger_claim(kube, router)
    audit, refusal = await ensure_audit_key(kube, router)
    return LedgerState(claim=claim, claim_phase=phase, audit_key_secret=audit, refusal=refusal)
