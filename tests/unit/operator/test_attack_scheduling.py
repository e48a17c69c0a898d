"""Attack review of FederatedRouter ``spec.scheduling``.

What holds: every field lands only under its own pod spec key (nothing can add or replace
the operator's pod fields, labels or selector), unknown fields are refused, and a spread
constraint without labelSelector counts only this router's pods.

What does not: the model (and the CRD) claim to check these fields "as the API server checks
a pod's", but several values the API server refuses in a pod template pass both. Such a spec
is admitted by the CRD, parses, and is rendered; the operator then applies the router's
other children with the new spec and the Deployment apply fails (Ready=False, "applying
children failed: 422 ..."), so the user learns at reconcile time what admission should have
told them, and the router is left half-applied.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fdp_operator.kube import ApiError
from fdp_operator.models import LABEL_KEY, SpecError, parse_router
from fdp_operator.reconcile.router import reconcile_router
from fdp_operator.render import names
from fdp_operator.render.router import render_pod_template, render_scheduling

from .conftest import node_body, router_body
from .test_security import NOW, POLICY, FakeKube

TSC = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
# A label key whose DNS prefix is 304 characters: a qualified name's prefix is at most 253
# (k8s.io/apimachinery IsQualifiedName -> IsDNS1123Subdomain), 317 only bounds the whole key.
LONG_PREFIX_KEY = ".".join(["a" * 60] * 5) + "/k"


def _router(**scheduling: Any) -> Any:
    return parse_router(router_body(scheduling=scheduling))


@pytest.mark.parametrize(
    ("scheduling", "why"),
    [
        (
            {"topologySpreadConstraints": [{**TSC, "labelSelector": {"matchLabels": {"not a key!": "v"}}}]},
            "labelSelector.matchLabels keys must be label keys (ValidateLabels)",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {**TSC, "labelSelector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}}
                ]
            },
            "labelSelector.matchExpressions[].key must be a label key (ValidateLabelName)",
        ),
        (
            {"topologySpreadConstraints": [{**TSC, "matchLabelKeys": ["bad key!"]}]},
            "matchLabelKeys[] must be label keys (ValidateLabelName)",
        ),
        ({"nodeSelector": {LONG_PREFIX_KEY: "v"}}, "a label key's prefix is at most 253 characters"),
        (
            {"topologySpreadConstraints": [{**TSC, "topologyKey": LONG_PREFIX_KEY}]},
            "topologyKey: a label key's prefix is at most 253 characters",
        ),
        (
            {"tolerations": [{"key": LONG_PREFIX_KEY, "operator": "Exists"}]},
            "toleration key: a label key's prefix is at most 253 characters",
        ),
    ],
)
def test_values_the_api_server_refuses_in_a_pod_are_refused_at_parse(
    scheduling: dict[str, Any], why: str
) -> None:
    with pytest.raises(SpecError):
        _router(**scheduling)
        pytest.fail(f"accepted, but the API server refuses it: {why}")


def test_scheduling_cannot_touch_the_operators_own_pod_fields() -> None:
    """Only the five scheduling keys are added; labels, selector, security context, service
    account and volumes stay the operator's, whatever is passed through in affinity."""
    sneaky = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {"hostNetwork": True, "securityContext": {"privileged": True}},
            "podAntiAffinity": {"serviceAccountName": "cluster-admin"},
        },
        "topologySpreadConstraints": [
            {**TSC, "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "someone-else"}}}
        ],
    }
    router = _router(**sneaky)
    extra = render_scheduling(router)
    assert set(extra) <= {
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "topologySpreadConstraints",
    }
    plain = render_pod_template(parse_router(router_body()), "cm", "d", "tls", "1", [])
    pod = render_pod_template(router, "cm", "d", "tls", "1", [])
    assert pod["metadata"] == plain["metadata"]
    for key, value in plain["spec"].items():
        assert pod["spec"][key] == value, key
    assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == router.ref.name
    assert set(pod["spec"]) - set(plain["spec"]) == set(extra)


def test_a_spread_constraint_without_selector_counts_only_this_routers_pods() -> None:
    router = _router(topologySpreadConstraints=[TSC])
    (tsc,) = render_scheduling(router)["topologySpreadConstraints"]
    assert tsc["labelSelector"] == {"matchLabels": names.selector_labels(router.ref.name)}


@pytest.mark.parametrize(
    "scheduling",
    [
        {"hostNetwork": True},
        {"affinity": {"nodeAffinity": {}, "hostNetwork": True}},
        {"tolerations": [{"operator": "Exists", "hostPID": True}]},
        {"topologySpreadConstraints": [{**TSC, "labelSelector": {"matchLabels": {}, "extra": 1}}]},
    ],
)
def test_unknown_fields_outside_the_affinity_kinds_are_refused(scheduling: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        _router(**scheduling)


class _ApiServer(FakeKube):
    """FakeKube that refuses a Deployment whose pod template carries a spread selector key
    that is not a label key, with the API server's 422 (apimachinery ValidateLabels)."""

    async def apply(self, obj: dict[str, Any], field_manager: str, *, force: bool = True) -> dict[str, Any]:
        if obj["kind"] == "Deployment":
            for tsc in obj["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
                for key in tsc.get("labelSelector", {}).get("matchLabels", {}):
                    if not re.fullmatch(LABEL_KEY, key):
                        raise ApiError(422, f"matchLabels: Invalid value: {key!r}", "Invalid")
        return await super().apply(obj, field_manager, force=force)


async def test_a_spec_the_api_server_refuses_is_half_applied_not_refused() -> None:
    """The same reconcile as an invalid toleration (refused: nothing written), but with a
    selector key the model lets through: the children before the Deployment are written."""
    bad = {**TSC, "labelSelector": {"matchLabels": {"not a key!": "v"}}}
    kube = _ApiServer([POLICY, {"kind": "HospitalNode", **node_body("a")}])
    outcome = await reconcile_router(
        kube,  # type: ignore[arg-type]
        router_body("fr1", scheduling={"topologySpreadConstraints": [bad]}),
        NOW,
        None,
    )
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "InvalidSpec", (ready, kube.writes)
    assert kube.writes == [], "a refused spec touches no child"


@pytest.mark.parametrize("name", ["high\n", "high-priority\n"])
def test_a_priority_class_name_with_a_trailing_newline_is_refused(name: str) -> None:
    """`_dns_subdomain` uses re.match with a pattern ending in '$', which Python lets match
    before a final newline; the API server (and the CRD's RE2 pattern) refuse the name. Only
    an older CRD lets such a spec through, but then the operator writes the other children
    before the Deployment apply fails. re.fullmatch (or \\Z) closes it."""
    with pytest.raises(SpecError):
        _router(priorityClassName=name)
