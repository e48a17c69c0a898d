"""Start-up checks for ``fdp-operator run``: fail fast with an error a person can act on.

Checks, in order: Kubernetes credentials exist; the fdp.io CRDs are installed; the
operator's identity may do what it needs (SelfSubjectAccessReview per verb/resource, in
each watched namespace or cluster-wide). Called by cli.py before kopf starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fdp_operator.kube import ApiError, Kube
from fdp_operator.models import GROUP, VERSION

NEEDED: tuple[tuple[str, str, str, str], ...] = (
    # (group, resource, subresource, verb)
    (GROUP, "federatedrouters", "", "list"),
    (GROUP, "federatedrouters", "", "watch"),
    (GROUP, "federatedrouters", "", "patch"),
    (GROUP, "federatedrouters", "status", "patch"),
    (GROUP, "hospitalnodes", "", "watch"),
    (GROUP, "hospitalnodes", "status", "patch"),
    (GROUP, "privacypolicies", "", "watch"),
    (GROUP, "privacypolicies", "status", "patch"),
    ("apps", "deployments", "", "patch"),
    ("apps", "deployments", "", "list"),
    ("", "services", "", "patch"),
    ("", "configmaps", "", "patch"),
    ("", "configmaps", "", "delete"),
    ("", "secrets", "", "get"),
    ("", "secrets", "", "create"),
    ("", "secrets", "", "patch"),
    ("", "persistentvolumeclaims", "", "get"),
    ("", "persistentvolumeclaims", "", "create"),
    ("", "persistentvolumeclaims", "", "patch"),
    ("", "serviceaccounts", "", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "", "patch"),
    ("policy", "poddisruptionbudgets", "", "patch"),
    ("networking.k8s.io", "networkpolicies", "", "patch"),
    ("", "events", "", "create"),
)


class PreflightError(Exception):
    pass


@dataclass(frozen=True)
class Check:
    namespace: str | None
    group: str
    resource: str
    subresource: str
    verb: str


async def missing_crds(kube: Kube) -> list[str]:
    try:
        found = await kube.request("GET", f"/apis/{GROUP}/{VERSION}")
    except ApiError as exc:
        if exc.status == 404:
            return ["hospitalnodes", "privacypolicies", "federatedrouters"]
        raise
    have = {r["name"] for r in found.get("resources", [])}
    return [r for r in ("hospitalnodes", "privacypolicies", "federatedrouters") if r not in have]


async def denied(kube: Kube, namespaces: Sequence[str | None]) -> list[Check]:
    out = []
    for ns in namespaces:
        for group, resource, sub, verb in NEEDED:
            attrs = {"group": group, "resource": resource, "verb": verb}
            if sub:
                attrs["subresource"] = sub
            if ns:
                attrs["namespace"] = ns
            review = await kube.request(
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                body={
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs},
                },
            )
            if not (review.get("status") or {}).get("allowed"):
                out.append(Check(ns, group, resource, sub, verb))
    return out


async def run_preflight(kube: Kube, namespaces: Sequence[str]) -> None:
    """Raise PreflightError naming what is missing; return quietly when all is well."""
    try:
        missing = await missing_crds(kube)
    except ApiError as exc:
        raise PreflightError(f"cannot reach the Kubernetes API at {kube.cfg.host}: {exc}") from None
    if missing:
        raise PreflightError(
            f"the {GROUP}/{VERSION} CRDs are not installed (missing: {', '.join(missing)}). "
            "Install them with `kubectl apply -f crds/` or the Helm chart charts/federated-dp-llm."
        )
    problems = await denied(kube, list(namespaces) or [None])
    if problems:
        lines = [
            f"  {c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}"
            f"{'.' + c.group if c.group else ''} in {c.namespace or 'all namespaces'}"
            for c in problems
        ]
        raise PreflightError(
            "the operator's identity lacks permissions (install the chart's RBAC, "
            "charts/federated-dp-llm/templates/rbac.yaml):\n" + "\n".join(lines)
        )
