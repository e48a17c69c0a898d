"""The operator's defences against being used as a confused deputy (issue 11, item 5).

Whoever may create a FederatedRouter or HospitalNode chooses an image and names Secrets;
the operator then runs that image with those Secrets mounted, with the operator's own
rights. Two rules bound what such a person can make it do:

- **Images**: ``spec.image`` must be in a repository the operator's settings allow
  (``OperatorSettings.allowed_image_repositories``; the chart value
  ``routerImages.allowedRepositories``). References are normalised the way container
  runtimes resolve them (``router:1`` is ``docker.io/library/router``), and a repository is
  compared whole: ``ghcr.io/federated-dp-llm/router-evil`` is not
  ``ghcr.io/federated-dp-llm/router``. An entry ending in ``/*`` allows every repository
  below that path.
- **Placement**: ``spec.scheduling`` may ask only for the PriorityClasses and toleration keys
  the operator's settings allow (chart values ``routerScheduling.*``). By default any class
  but Kubernetes' own ``system-cluster-critical``/``system-node-critical`` (which would let a
  router preempt the cluster's critical pods), and any keyed toleration but not a key-less
  one (it tolerates every taint, control-plane and NoExecute ones included).
- **Secrets**: a Secret is mounted into a router pod (or used by the operator to probe a
  node) only if it carries the label ``fdp.io/allow-router-mount: "true"``, set by whoever
  owns the Secret. The operator's own Secrets carry it.

Pure: the reconcile steps fetch the Secrets and pass them in. Called by
reconcile/router.py, reconcile/node.py and the tests that attack each rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fdp_operator.models import (
    ALLOW_MOUNT_LABEL,
    DEFAULT_ROUTER_IMAGE,
    FederatedRouter,
    HospitalNode,
    SchedulingSpec,
    SecretKeyRef,
)

# ---------------------------------------------------------------- images

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_PATH = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def image_repository(image: str) -> str:
    """The fully qualified repository of an image reference (no tag, no digest), as a
    container runtime resolves it: ``router:1`` -> ``docker.io/library/router``,
    ``GHCR.io/org/app@sha256:...`` -> ``ghcr.io/org/app``. ValueError if it is not a reference."""
    m = _REFERENCE.fullmatch(image)
    if m is None:
        raise ValueError(f"{image!r} is not a container image reference")
    name = m.group("name")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        domain, path = first.lower(), rest
    else:
        domain, path = "docker.io", name
    if not _PATH.fullmatch(path):
        raise ValueError(f"{image!r} is not a container image reference (repository paths are lowercase)")
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return f"{domain}/{path}"


def _normalise_allowed(entry: str) -> str:
    """An allow-list entry in the same form as ``image_repository`` (``/*`` kept)."""
    entry = entry.strip()
    if entry.endswith("/*"):
        return image_repository(entry[:-2]) + "/*"
    return image_repository(entry)


def image_refusal(image: str, allowed: Iterable[str]) -> str | None:
    """None if ``image`` may run, else why not (naming the image and the allowed repositories)."""
    allowed = tuple(allowed)
    try:
        repo = image_repository(image)
    except ValueError as exc:
        return f"spec.image: {exc}"
    for entry in allowed:
        try:
            rule = _normalise_allowed(entry)
        except ValueError:
            continue  # a malformed setting allows nothing (OperatorSettings reports it at start-up)
        if rule.endswith("/*") and repo.startswith(rule[:-1]):
            return None
        if repo == rule:
            return None
    return (
        f"spec.image {image!r} (repository {repo}) is not in an allowed image repository "
        f"({', '.join(allowed) or 'none configured'}); the operator deploys nothing for this router. "
        "An operator administrator allows repositories with the chart value "
        "routerImages.allowedRepositories"
    )


# ---------------------------------------------------------------- placement

#: Kubernetes' own classes for the cluster's critical components (kube-system's)
SYSTEM_PRIORITY_CLASSES = ("system-cluster-critical", "system-node-critical")
#: An allow-list entry that allows everything
ANY = "*"


def scheduling_refusal(scheduling: SchedulingSpec, settings: OperatorSettings) -> str | None:
    """None if the router's placement is allowed, else why not (naming the field, the value and
    the setting that would allow it)."""
    pc = scheduling.priority_class_name
    classes = settings.allowed_priority_classes
    if pc is not None and ANY not in (classes or ()):
        if classes is None and pc in SYSTEM_PRIORITY_CLASSES:
            allowed = f"any class but {', '.join(SYSTEM_PRIORITY_CLASSES)}"
        elif classes is not None and pc not in classes:
            allowed = ", ".join(classes) or "none"
        else:
            allowed = ""
        if allowed:
            return (
                f"spec.scheduling.priorityClassName {pc!r} is not allowed for router pods (allowed: "
                f"{allowed}); the operator deploys nothing for this router. An operator administrator "
                "allows classes with the chart value routerScheduling.allowedPriorityClasses"
            )
    keys = settings.allowed_toleration_keys
    if ANY in (keys or ()):
        return None
    for i, t in enumerate(scheduling.tolerations):
        key = t.key or ""
        if key and (keys is None or key in keys):
            continue
        what = "a toleration without a key (it tolerates every taint)" if not key else f"key {key!r}"
        allowed = "any key" if keys is None else (", ".join(keys) or "none")
        return (
            f"spec.scheduling.tolerations[{i}]: {what} is not allowed for router pods (allowed: "
            f"{allowed}); the operator deploys nothing for this router. An operator administrator "
            "allows keys with the chart value routerScheduling.allowedTolerationKeys"
        )
    return None


# ---------------------------------------------------------------- settings


DEFAULT_ALLOWED_REPOSITORIES = (image_repository(DEFAULT_ROUTER_IMAGE),)
#: Without a setting, a router admits ingress from pods of its own namespace only.
DEFAULT_INGRESS_FROM: tuple[dict[str, Any], ...] = ({"podSelector": {}},)


@dataclass(frozen=True)
class OperatorSettings:
    """Operator-level policy, set by whoever installs the operator (chart values -> env ->
    ``from_env``), never by the authors of custom resources."""

    allowed_image_repositories: tuple[str, ...] = DEFAULT_ALLOWED_REPOSITORIES
    default_ingress_from: tuple[dict[str, Any], ...] = DEFAULT_INGRESS_FROM
    #: None: any class but SYSTEM_PRIORITY_CLASSES; "*" in it: any class
    allowed_priority_classes: tuple[str, ...] | None = None
    #: None: any key (a key-less toleration is refused); "*" in it: anything
    allowed_toleration_keys: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        """``FDP_ALLOWED_IMAGE_REPOSITORIES``, ``FDP_ALLOWED_PRIORITY_CLASSES`` and
        ``FDP_ALLOWED_TOLERATION_KEYS`` (comma separated) and ``FDP_DEFAULT_INGRESS_FROM`` (a
        JSON list of NetworkPolicyPeer objects); unset or empty: the defaults (``-`` for the
        placement lists: none allowed). ValueError naming the variable when one is malformed
        (the operator then refuses to start)."""
        import json

        repos = tuple(
            r.strip() for r in env.get("FDP_ALLOWED_IMAGE_REPOSITORIES", "").split(",") if r.strip()
        )
        for r in repos:
            try:
                _normalise_allowed(r)
            except ValueError as exc:
                raise ValueError(f"FDP_ALLOWED_IMAGE_REPOSITORIES: {exc}") from None
        ingress: tuple[dict[str, Any], ...] = DEFAULT_INGRESS_FROM
        raw = env.get("FDP_DEFAULT_INGRESS_FROM", "").strip()
        if raw:
            try:
                peers = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"FDP_DEFAULT_INGRESS_FROM: not JSON ({exc})") from None
            if not isinstance(peers, list) or not all(isinstance(p, dict) and p for p in peers):
                raise ValueError("FDP_DEFAULT_INGRESS_FROM: must be a JSON list of NetworkPolicyPeer objects")
            ingress = tuple(peers)
        return cls(
            allowed_image_repositories=repos or DEFAULT_ALLOWED_REPOSITORIES,
            default_ingress_from=ingress,
            allowed_priority_classes=_placement_list(env, "FDP_ALLOWED_PRIORITY_CLASSES"),
            allowed_toleration_keys=_placement_list(env, "FDP_ALLOWED_TOLERATION_KEYS"),
        )


_PLACEMENT_ENTRY = re.compile(r"\*|[A-Za-z0-9]([A-Za-z0-9./_-]{0,315}[A-Za-z0-9])?")


def _placement_list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """Unset or empty: None (the default rule); ``-``: an empty list (nothing allowed)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw == "-":
        return ()
    entries = tuple(e.strip() for e in raw.split(","))
    for e in entries:
        if not _PLACEMENT_ENTRY.fullmatch(e):
            raise ValueError(f"{name}: {e!r} is not a PriorityClass name, a toleration key or '*'")
    return entries


# ---------------------------------------------------------------- Secrets


@dataclass(frozen=True)
class SecretUse:
    """One place a spec names a Secret: which Secret, the field that names it, the keys read."""

    name: str
    field: str
    keys: tuple[str, ...]


def _use(ref: SecretKeyRef | None, field: str) -> list[SecretUse]:
    return [] if ref is None else [SecretUse(ref.name, field, (ref.key,))]


def router_secret_uses(router: FederatedRouter) -> list[SecretUse]:
    """Secrets the FederatedRouter's own spec names (not the operator's own Secrets);
    ``spec.tls.secretName`` is read by the TLS step, which applies the same rule (tls_step.py)."""
    s = router.spec
    return [
        *_use(s.auth.hs256_secret_ref, "spec.auth.hs256SecretRef"),
        *(
            _use(s.ledger.dsn_secret_ref, "spec.ledger.dsnSecretRef")
            if s.ledger.backend == "postgres"
            else []
        ),
        *_use(s.ledger.audit_key_secret_ref, "spec.ledger.auditKeySecretRef"),
    ]


def node_secret_uses(node: HospitalNode) -> list[SecretUse]:
    """Secrets a HospitalNode names (mTLS material and the server's credentials)."""
    s = node.spec
    uses = []
    if s.tls.ca_secret_ref:
        uses.append(SecretUse(s.tls.ca_secret_ref.name, "spec.tls.caSecretRef", ("ca.crt",)))
    if s.tls.client_cert_secret_ref:
        uses.append(
            SecretUse(
                s.tls.client_cert_secret_ref.name, "spec.tls.clientCertSecretRef", ("tls.crt", "tls.key")
            )
        )
    return [
        *uses,
        *_use(s.auth.api_key_secret_ref, "spec.auth.apiKeySecretRef"),
        *_use(s.auth.headers_secret_ref, "spec.auth.headersSecretRef"),
    ]


def allows_mount(secret: Mapping[str, Any]) -> bool:
    """The Secret's owner opted in: label ``fdp.io/allow-router-mount`` is exactly ``"true"``."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(ALLOW_MOUNT_LABEL) == "true"


@dataclass(frozen=True)
class Refusal:
    """Why a Secret reference is not honoured; ``reason`` is a condition reason."""

    reason: str  # SecretNotAllowed | SecretMissing
    message: str


NOT_ALLOWED = "SecretNotAllowed"
MISSING = "SecretMissing"


def secret_refusal(use: SecretUse, secret: Mapping[str, Any] | None) -> Refusal | None:
    """None if ``use`` may be honoured with ``secret`` (as read from the API), else why not."""
    if secret is None:
        return Refusal(MISSING, f"Secret '{use.name}' ({use.field}) not found")
    if not allows_mount(secret):
        return Refusal(
            NOT_ALLOWED,
            f"Secret '{use.name}' ({use.field}) does not carry the label {ALLOW_MOUNT_LABEL}=\"true\": "
            "the operator mounts only Secrets their owner opted in "
            f"(kubectl label secret {use.name} {ALLOW_MOUNT_LABEL}=true)",
        )
    present = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
    missing = [k for k in use.keys if k not in present]
    if missing:
        return Refusal(
            MISSING, f"Secret '{use.name}' ({use.field}) has no key {', '.join(repr(k) for k in missing)}"
        )
    return None


def refusals(uses: Iterable[SecretUse], secrets: Mapping[str, Mapping[str, Any] | None]) -> list[Refusal]:
    """Every refusal, in order (``secrets`` maps a name to the Secret read, or None)."""
    out = []
    for use in uses:
        why = secret_refusal(use, secrets.get(use.name))
        if why is not None:
            out.append(why)
    return out
