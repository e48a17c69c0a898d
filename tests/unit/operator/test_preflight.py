"""Start-up errors say what is missing. The API is faked at the edge (one request method)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fdp_operator.cli import main
from fdp_operator.kube import ApiError
from fdp_operator.preflight import PreflightError, run_preflight


class FakeKube:
    def __init__(self, resources: list[str] | None, denied: set[tuple[str, str]] = frozenset()) -> None:
        self.resources = resources
        self.denied = denied
        self.cfg = SimpleNamespace(host="https://api.example")
        self.reviewed: set[str] = set()  # namespaces a permission was asked about

    async def request(self, method: str, path: str, body=None, **_):
        if path == "/apis/fdp.io/v1alpha1":
            if self.resources is None:
                raise ApiError(404, "not found", "NotFound")
            return {"resources": [{"name": r} for r in self.resources]}
        attrs = body["spec"]["resourceAttributes"]
        self.reviewed.add(attrs.get("namespace", ""))
        return {"status": {"allowed": (attrs["verb"], attrs["resource"]) not in self.denied}}


ALL = ["hospitalnodes", "privacypolicies", "federatedrouters"]


async def test_missing_crds_are_named_with_the_fix() -> None:
    with pytest.raises(PreflightError) as exc:
        await run_preflight(FakeKube(None), ["ns"])
    assert "CRDs are not installed" in str(exc.value) and "kubectl apply -f crds/" in str(exc.value)
    with pytest.raises(PreflightError, match="missing: federatedrouters"):
        await run_preflight(FakeKube(ALL[:2]), ["ns"])


async def test_each_missing_permission_is_listed_per_namespace() -> None:
    kube = FakeKube(ALL, denied={("patch", "deployments"), ("get", "secrets")})
    with pytest.raises(PreflightError) as exc:
        await run_preflight(kube, ["clinic-a"])
    msg = str(exc.value)
    assert "patch deployments.apps in clinic-a" in msg and "get secrets in clinic-a" in msg
    assert "federatedrouters" not in msg


async def test_all_permissions_present_passes() -> None:
    kube = FakeKube(ALL)
    await run_preflight(kube, ["clinic-a", "clinic-b"])
    assert {"clinic-a", "clinic-b"} <= kube.reviewed  # it really checked each watched namespace


def test_run_without_a_namespace_refuses_to_guess(monkeypatch, capsys) -> None:
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    assert main(["run"]) == 2
    assert "no namespace to watch" in capsys.readouterr().err
