"""The thin apply layer: owner references, server-side apply, deletes, retries.

Called by the reconcile steps with the plain dicts ``render`` produced. Every write uses
one field manager (``fdp-operator``) and ``force=true``: the operator owns the fields it
renders and takes them back from a hand edit, but never touches fields it does not render
(for example ``spec.replicas`` of an autoscaled Deployment, which the HPA owns).
Transient failures (409, 429, 5xx, connection errors) are retried with backoff.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aiohttp

from fdp_operator.kube import ApiError, Kube
from fdp_operator.models import API_VERSION

FIELD_MANAGER = "fdp-operator"
RETRY_STATUSES = {409, 429, 500, 502, 503, 504}
T = TypeVar("T")


def owned_by(obj: dict[str, Any], owner_kind: str, owner_name: str, owner_uid: str) -> dict[str, Any]:
    """A copy of ``obj`` with a controller ownerReference (deleting the owner deletes it)."""
    out = copy.deepcopy(obj)
    out["metadata"]["ownerReferences"] = [
        {
            "apiVersion": API_VERSION,
            "kind": owner_kind,
            "name": owner_name,
            "uid": owner_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return out


async def with_retries(call: Callable[[], Awaitable[T]], attempts: int = 4, base_delay: float = 0.2) -> T:
    for attempt in range(attempts):
        try:
            return await call()
        except ApiError as exc:
            if exc.status not in RETRY_STATUSES or attempt == attempts - 1:
                raise
        except (aiohttp.ClientError, TimeoutError):
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(base_delay * 2**attempt)
    raise AssertionError("unreachable")


async def apply_all(
    kube: Kube,
    objects: Iterable[dict[str, Any]],
    owner: tuple[str, str, str],
    *,
    field_manager: str = FIELD_MANAGER,
) -> list[dict[str, Any]]:
    """Server-side apply each object with the owner's reference, in order."""
    kind, name, uid = owner
    out = []
    for obj in objects:
        desired = owned_by(obj, kind, name, uid)
        out.append(await with_retries(lambda d=desired: kube.apply(d, field_manager)))  # type: ignore[misc]
    return out


async def delete_all(kube: Kube, namespace: str, targets: Iterable[tuple[str, str]]) -> None:
    for kind, name in targets:
        await with_retries(lambda k=kind, n=name: kube.delete(k, namespace, n))  # type: ignore[misc]


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch turning ``old`` into ``new`` (None when equal: skip the write)."""
    old = old or {}
    if old == new:
        return None
    patch: dict[str, Any] = {}
    for k, v in new.items():
        if k in old and isinstance(v, dict) and isinstance(old[k], dict):
            sub = status_patch(old[k], v)
            if sub is not None:
                patch[k] = sub
        elif k not in old or old[k] != v:
            patch[k] = v
    for k in old:
        if k not in new:
            patch[k] = None
    return patch or None


async def write_status(
    kube: Kube, kind: str, namespace: str, name: str, old: dict[str, Any] | None, new: dict[str, Any]
) -> bool:
    """The one status write of a reconcile; skipped when nothing changed. True if written."""
    patch = status_patch(old, new)
    if patch is None:
        return False
    try:
        await with_retries(lambda: kube.patch_status(kind, namespace, name, patch))
    except ApiError as exc:
        if exc.status == 404:  # deleted meanwhile
            return False
        raise
    return True
