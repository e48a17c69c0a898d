"""The workloads seam in its plain (RollingUpdate) form."""

from __future__ import annotations

from datetime import UTC, datetime

from fdp_operator.render.workloads import REVISION_ANNOTATION, ObservedState, render_workloads

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATE = {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [{"name": "router", "image": "i"}]}}


def _by_kind(plan):
    return {o["kind"]: o for o in plan.objects}


def test_plain_router_gets_one_deployment_and_one_service(make_router) -> None:
    plan = render_workloads(make_router(replicas=1), TEMPLATE, ObservedState(now=NOW))
    objs = _by_kind(plan)
    dep, svc = objs["Deployment"], objs["Service"]
    assert dep["metadata"]["name"] == "fr1" and dep["spec"]["replicas"] == 1
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["metadata"]["labels"]["x"] == "y"
    assert plan.hpa_target == "fr1"
    assert not plan.available and plan.progressing


def test_autoscaled_router_leaves_replicas_to_the_hpa(make_router) -> None:
    router = make_router(
        autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5},
        ledger={"backend": "postgres", "dsnSecretRef": {"name": "dsn", "key": "dsn"}},
    )
    existing = {"metadata": {"name": "fr1"}, "spec": {"replicas": 4}}
    plan = render_workloads(router, TEMPLATE, ObservedState(now=NOW, deployments={"fr1": existing}))
    assert "replicas" not in _by_kind(plan)["Deployment"]["spec"]
    assert plan.replicas["desired"] == 4


def test_available_only_when_the_cluster_runs_the_current_revision(make_router) -> None:
    router = make_router(replicas=1)
    first = render_workloads(router, TEMPLATE, ObservedState(now=NOW))
    rev = first.rollout_status["currentRevision"]
    ok_status = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    running = {"metadata": {"generation": 2, "annotations": {REVISION_ANNOTATION: rev}}, "status": ok_status}
    plan = render_workloads(router, TEMPLATE, ObservedState(now=NOW, deployments={"fr1": running}))
    assert plan.available and plan.rollout_status["stableRevision"] == rev
    old = {**running, "metadata": {"generation": 2, "annotations": {REVISION_ANNOTATION: "old"}}}
    plan = render_workloads(router, TEMPLATE, ObservedState(now=NOW, deployments={"fr1": old}))
    assert not plan.available
