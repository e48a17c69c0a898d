"""The confused-deputy rules (issue 11, item 5), each with the attempts to get around it.

Whoever may create a FederatedRouter or HospitalNode picks the image and names Secrets; the
operator runs that image with those Secrets mounted. These tests try what such a person
would: images from elsewhere that look like ours, Secrets nobody opted in, labels that only
look like the opt-in, and check the operator then deploys nothing (reconcile with a fake API).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from fdp_operator.reconcile.router import reconcile_router
from fdp_operator.security import (
    DEFAULT_ALLOWED_REPOSITORIES,
    OperatorSettings,
    SecretUse,
    image_refusal,
    image_repository,
    secret_refusal,
)

from .conftest import node_body, router_body

OURS = DEFAULT_ALLOWED_REPOSITORIES
LABEL = "fdp.io/allow-router-mount"


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/federated-dp-llm/router:0.1.0",
        "ghcr.io/federated-dp-llm/router:0.2.0-rc.1",
        "ghcr.io/federated-dp-llm/router@sha256:" + "a" * 64,
        "ghcr.io/federated-dp-llm/router:0.1.0@sha256:" + "b" * 64,
        "GHCR.io/federated-dp-llm/router:1",  # registry host names are case-insensitive
    ],
)
def test_the_projects_router_image_runs_by_default(image: str) -> None:
    assert image_refusal(image, OURS) is None


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("ghcr.io/federated-dp-llm/router-evil:0.1.0", "a name that only starts like ours"),
        ("ghcr.io/federated-dp-llm/router/evil:0.1.0", "a repository below ours"),
        ("ghcr.io/federated-dp-llm/operator:0.1.0", "another of the project's images"),
        ("ghcr.io.evil.example/federated-dp-llm/router:0.1.0", "a registry whose name starts like ours"),
        ("evil.example/ghcr.io/federated-dp-llm/router:0.1.0", "our path under another registry"),
        ("docker.io/federated-dp-llm/router:0.1.0", "the same path on Docker Hub"),
        ("federated-dp-llm/router:0.1.0", "the same path, no registry (Docker Hub)"),
        ("router:0.1.0", "the bare name (docker.io/library/router)"),
        ("localhost:5000/federated-dp-llm/router:0.1.0", "a local registry"),
        ("ghcr.io/federated-dp-llm/Router:0.1.0", "upper case in the path is not a reference"),
        ("ghcr.io/federated-dp-llm/router:0.1.0\n", "a trailing newline"),
        ("ghcr.io/federated-dp-llm/router:0.1.0 evil.example/x", "two references"),
        ("ghcr.io/federated-dp-llm/r%6Futer:1", "an escaped character"),
        ("", "nothing"),
    ],
)
def test_an_image_from_anywhere_else_is_refused_and_named(image: str, why: str) -> None:
    refusal = image_refusal(image, OURS)
    assert refusal is not None, why
    assert repr(image) in refusal


def test_a_path_wildcard_allows_the_path_and_nothing_that_only_starts_like_it() -> None:
    allowed = ("registry.hospital.example/fdp/*",)
    assert image_refusal("registry.hospital.example/fdp/router:1", allowed) is None
    assert image_refusal("registry.hospital.example/fdp/team/router:1", allowed) is None
    assert image_refusal("registry.hospital.example/fdp-evil/router:1", allowed) is not None
    assert image_refusal("registry.hospital.example/fdp:1", allowed) is not None


def test_references_resolve_as_a_container_runtime_resolves_them() -> None:
    assert image_repository("router:1") == "docker.io/library/router"
    assert image_repository("index.docker.io/org/app") == "docker.io/org/app"
    assert image_repository("localhost:5000/app:dev") == "localhost:5000/app"


def test_settings_come_from_the_environment_and_a_bad_one_stops_the_operator() -> None:
    s = OperatorSettings.from_env(
        {
            "FDP_ALLOWED_IMAGE_REPOSITORIES": "ghcr.io/federated-dp-llm/router, registry.example/fdp/*",
            "FDP_DEFAULT_INGRESS_FROM": '[{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]',
        }
    )
    assert s.allowed_image_repositories == ("ghcr.io/federated-dp-llm/router", "registry.example/fdp/*")
    assert s.default_ingress_from == ({"namespaceSelector": {"matchLabels": {"team": "apps"}}},)
    assert OperatorSettings.from_env({}) == OperatorSettings()
    assert (
        OperatorSettings.from_env({"FDP_ALLOWED_IMAGE_REPOSITORIES": " "}).allowed_image_repositories == OURS
    )
    with pytest.raises(ValueError, match="FDP_ALLOWED_IMAGE_REPOSITORIES"):
        OperatorSettings.from_env({"FDP_ALLOWED_IMAGE_REPOSITORIES": "Not A Repo"})
    with pytest.raises(ValueError, match="FDP_DEFAULT_INGRESS_FROM"):
        OperatorSettings.from_env({"FDP_DEFAULT_INGRESS_FROM": "[{}]"})  # {} would admit everything


# ---------------------------------------------------------------- Secrets

USE = SecretUse("jwt", "spec.auth.hs256SecretRef", ("secret",))


def _secret(
    name: str = "jwt", labels: dict[str, str] | None = None, keys=("secret",), **meta
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}, **meta},
        "data": {k: base64.b64encode(b"x" * 32).decode() for k in keys},
    }


def test_an_opted_in_secret_with_its_key_is_honoured() -> None:
    assert secret_refusal(USE, _secret(labels={LABEL: "true"})) is None


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (_secret(), "no label at all"),
        (_secret(labels={LABEL: "True"}), "'True' is not 'true'"),
        (_secret(labels={LABEL: "yes"}), "'yes' is not 'true'"),
        (_secret(labels={LABEL: ""}), "an empty value"),
        (_secret(labels={f"{LABEL}-x": "true"}), "a longer key"),
        (_secret(labels={"example.com/allow-router-mount": "true"}), "the same name under another prefix"),
        (_secret(labels={"allow-router-mount": "true"}), "no prefix"),
        (_secret(annotations={LABEL: "true"}), "an annotation, not a label"),
    ],
)
def test_a_secret_nobody_opted_in_is_refused_with_its_name_and_the_label(secret, why) -> None:
    refusal = secret_refusal(USE, secret)
    assert refusal is not None, why
    assert refusal.reason == "SecretNotAllowed"
    assert "Secret 'jwt' (spec.auth.hs256SecretRef)" in refusal.message and LABEL in refusal.message


def test_a_missing_secret_or_key_is_named() -> None:
    missing = secret_refusal(USE, None)
    assert missing is not None and missing.reason == "SecretMissing" and "not found" in missing.message
    no_key = secret_refusal(USE, _secret(labels={LABEL: "true"}, keys=("other",)))
    assert no_key is not None and "no key 'secret'" in no_key.message


# ---------------------------------------------------------------- reconcile: nothing deployed


class FakeKube:
    """Just enough of Kube for a reconcile: objects by (kind, name), every write recorded."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.writes: list[tuple[str, str, str]] = []
        self.status: dict[str, Any] = {}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    async def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, _), o in self.objects.items() if k == kind]

    async def apply(self, obj: dict[str, Any], field_manager: str, *, force: bool = True) -> dict[str, Any]:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", kind, name))
        return self.objects[(kind, name)]

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, name), None) is not None

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status


NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = {"kind": "PrivacyPolicy", "metadata": {"name": "pol", "namespace": "ns"}, "spec": {}}


def _labelled(name: str, **data: str) -> dict[str, Any]:
    return {
        "kind": "Secret",
        "metadata": {"name": name, "labels": {LABEL: "true"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _node(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "HospitalNode", **node_body(name, **spec)}


async def _reconcile(
    router_spec: dict[str, Any], *extra: dict[str, Any], settings=None
) -> tuple[FakeKube, dict]:
    kube = FakeKube([POLICY, _node("a"), *extra])
    body = router_body("fr1", **router_spec)
    outcome = await reconcile_router(kube, body, NOW, settings)  # type: ignore[arg-type]
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    return kube, ready


def _deployed(kube: FakeKube) -> set[str]:
    return {kind for _, kind, _ in kube.writes if kind not in ("Secret",)}


async def test_the_reconcile_runs_everything_for_an_allowed_router() -> None:
    kube, ready = await _reconcile({})
    assert {"Deployment", "ConfigMap", "NetworkPolicy", "PersistentVolumeClaim"} <= _deployed(kube)
    assert ("create", "Secret", "fr1-audit-key") in kube.writes
    assert ready["reason"] != "ImageNotAllowed"


async def test_an_image_that_only_looks_like_ours_deploys_nothing() -> None:
    kube, ready = await _reconcile({"image": "ghcr.io/federated-dp-llm/router-evil:0.1.0"})
    assert kube.writes == [] and ready["status"] == "False" and ready["reason"] == "ImageNotAllowed"
    assert "'ghcr.io/federated-dp-llm/router-evil:0.1.0'" in ready["message"]
    stalled = next(c for c in kube.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"


async def test_an_allow_list_the_administrator_widened_admits_their_registry() -> None:
    settings = OperatorSettings(allowed_image_repositories=("registry.hospital.example/fdp/router",))
    kube, _ = await _reconcile({"image": "registry.hospital.example/fdp/router:2"}, settings=settings)
    assert "Deployment" in _deployed(kube)
    kube, ready = await _reconcile({}, settings=settings)  # now ours is not on the list
    assert ready["reason"] == "ImageNotAllowed" and kube.writes == []


@pytest.mark.parametrize(
    ("spec", "secret", "field"),
    [
        ({"auth": {"hs256SecretRef": {"name": "jwt"}}}, "jwt", "spec.auth.hs256SecretRef"),
        ({"ledger": {"auditKeySecretRef": {"name": "audit"}}}, "audit", "spec.ledger.auditKeySecretRef"),
        (
            {"ledger": {"backend": "postgres", "dsnSecretRef": {"name": "dsn"}}},
            "dsn",
            "spec.ledger.dsnSecretRef",
        ),
        ({"tls": {"secretName": "serving"}}, "serving", "spec.tls.secretName"),
    ],
)
async def test_a_secret_without_the_label_is_not_mounted_and_nothing_is_deployed(spec, secret, field) -> None:
    unlabelled = {
        "kind": "Secret",
        "metadata": {"name": secret, "labels": {"app": "x"}, "annotations": {LABEL: "true"}},
        "data": {k: "eA==" for k in ("secret", "key", "dsn", "tls.crt", "tls.key", "ca.crt")},
    }
    kube, ready = await _reconcile(spec, unlabelled)
    assert ready["status"] == "False" and ready["reason"] == "SecretNotAllowed"
    assert f"Secret '{secret}' ({field})" in ready["message"]
    assert not {"Deployment", "ConfigMap", "PersistentVolumeClaim"} & _deployed(kube)


async def test_the_same_secret_labelled_is_mounted() -> None:
    kube, _ = await _reconcile(
        {"auth": {"hs256SecretRef": {"name": "jwt"}}}, _labelled("jwt", secret="s" * 32)
    )
    dep = kube.objects[("Deployment", "fr1")]
    assert "jwt" in {
        v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v
    }


async def test_a_node_naming_an_unlabelled_secret_is_left_out_and_its_secret_never_mounted() -> None:
    stolen = {"kind": "Secret", "metadata": {"name": "payroll-db"}, "data": {"ca.crt": "eA=="}}
    evil = _node("evil", tls={"caSecretRef": {"name": "payroll-db"}})
    kube, _ready = await _reconcile({}, evil, stolen)
    dep = kube.objects[("Deployment", "fr1")]
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert "payroll-db" not in {v["secret"]["secretName"] for v in volumes if "secret" in v}
    cm = kube.objects[("ConfigMap", next(n for k, n in kube.objects if k == "ConfigMap"))]
    assert '"evil"' not in cm["data"]["router-config.json"]
    nodes_ready = next(c for c in kube.status["conditions"] if c["type"] == "NodesReady")
    assert (
        nodes_ready["reason"] == "SecretNotAllowed" and "evil: Secret 'payroll-db'" in nodes_ready["message"]
    )


async def test_an_audit_key_someone_else_planted_under_the_operators_name_is_not_used() -> None:
    planted = {"kind": "Secret", "metadata": {"name": "fr1-audit-key"}, "data": {"key": "eA=="}}
    kube, ready = await _reconcile({}, planted)
    assert ready["reason"] == "SecretNotAllowed" and "fr1-audit-key" in ready["message"]
    assert "Deployment" not in _deployed(kube)
    assert ("create", "Secret", "fr1-audit-key") not in kube.writes  # never overwritten


async def test_the_operators_audit_key_is_created_once_and_then_only_read() -> None:
    kube = FakeKube([POLICY, _node("a")])
    body = router_body("fr1")
    await reconcile_router(kube, body, NOW)  # type: ignore[arg-type]
    first = kube.objects[("Secret", "fr1-audit-key")]
    kube.writes.clear()
    await reconcile_router(kube, body, NOW)  # type: ignore[arg-type]
    assert kube.objects[("Secret", "fr1-audit-key")] is first
    assert not [w for w in kube.writes if w[2] in ("fr1-audit-key", "fr1-ledger")]
