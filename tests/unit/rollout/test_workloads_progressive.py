"""The workloads seam for BlueGreen and Canary: engine decisions rendered as cluster objects."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from fdp_operator import conditions as cond
from fdp_operator.models import parse_router
from fdp_operator.render.workloads import (
    REVISION_ANNOTATION,
    ObservedState,
    WorkloadPlan,
    render_workloads,
    revision_of,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def template(image: str) -> dict[str, Any]:
    """A pod template as render_pod_template makes it: it already carries the selector labels."""
    labels = {"x": "y", "app.kubernetes.io/name": "fdp-router", "app.kubernetes.io/instance": "fr1"}
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "router", "image": image}]}}


def router(annotations: dict[str, str] | None = None, **rollout: Any):
    spec = {
        "policyRef": {"name": "pol"},
        "replicas": 4,
        "rollout": rollout,
        "ledger": {"backend": "postgres", "dsnSecretRef": {"name": "dsn", "key": "dsn"}},
    }
    if rollout.pop("autoscaled", False):
        spec.update(replicas=1, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 9})
    meta = {"name": "fr1", "namespace": "ns", "uid": "u", "generation": 1, "annotations": annotations or {}}
    return parse_router({"metadata": meta, "spec": spec})


def objects(plan: WorkloadPlan) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in plan.objects}


def scaled(plan: WorkloadPlan) -> dict[str, int]:
    """Replica counts the plan sets (replicas-only applies under the scale field manager)."""
    return {o["metadata"]["name"]: o["spec"]["replicas"] for o in plan.scale}


def settle(
    plan: WorkloadPlan, before: dict[str, dict[str, Any]] | None = None, generation: int = 1
) -> dict[str, dict[str, Any]]:
    """What the cluster would report once every applied Deployment is fully available."""
    out = {}
    counts = scaled(plan)
    for o in plan.objects:
        if o["kind"] != "Deployment":
            continue
        name = o["metadata"]["name"]
        if name.endswith(("-blue", "-green", "-stable", "-canary")):
            assert "replicas" not in o["spec"], "counts go out only under the scale field manager"
        default = o["spec"].get("replicas", 1)
        n = counts.get(name, ((before or {}).get(name) or {}).get("spec", {}).get("replicas", default))
        d = copy.deepcopy(o)
        d["spec"]["replicas"] = n
        d["metadata"]["generation"] = generation
        d["status"] = {
            "observedGeneration": generation,
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        }
        out[o["metadata"]["name"]] = d
    return out


def services(plan: WorkloadPlan) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in plan.objects if o["kind"] == "Service"}


def after(plan: WorkloadPlan, cluster: dict[str, dict[str, Any]]) -> ObservedState:
    """What the next reconcile observes once `plan` was applied and settled into `cluster`."""
    return ObservedState(
        now=NOW, deployments=cluster, services=services(plan), previous_rollout_status=plan.rollout_status
    )


def image(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_blue_green_renders_a_colored_deployment_an_active_and_a_preview_service() -> None:
    r = router(strategy="BlueGreen")
    plan = render_workloads(r, template("img:1"), ObservedState(now=NOW))
    objs = objects(plan)
    blue = objs[("Deployment", "fr1-blue")]
    assert blue["spec"]["selector"]["matchLabels"]["fdp.io/color"] == "blue"
    assert blue["spec"]["template"]["metadata"]["labels"]["fdp.io/color"] == "blue"
    assert blue["spec"]["template"]["metadata"]["labels"]["x"] == "y"
    assert blue["metadata"]["annotations"][REVISION_ANNOTATION] == revision_of(template("img:1"))
    assert scaled(plan) == {"fr1-blue": 4}
    assert objs[("Service", "fr1")]["spec"]["selector"]["fdp.io/color"] == "blue"
    assert objs[("Service", "fr1-preview")]["spec"]["selector"]["fdp.io/color"] == "green"
    assert plan.hpa_target == "fr1-blue" and not plan.available and plan.progressing
    assert plan.rollout_status["strategy"] == "BlueGreen"


def test_a_blue_green_update_previews_green_and_keeps_blues_observed_template_untouched() -> None:
    r = router(strategy="BlueGreen", autoPromotionEnabled=False)
    first = render_workloads(r, template("img:1"), ObservedState(now=NOW))
    cluster = settle(first)
    observed = ObservedState(
        now=NOW, deployments=cluster, services=services(first), previous_rollout_status=first.rollout_status
    )
    healthy = render_workloads(r, template("img:1"), observed)
    assert healthy.available and not healthy.progressing
    cluster["fr1-blue"]["spec"]["template"]["metadata"]["annotations"] = {"set-by": "cluster defaulting"}
    observed = ObservedState(
        now=NOW,
        deployments=cluster,
        services=services(healthy),
        previous_rollout_status=healthy.rollout_status,
    )
    plan = render_workloads(r, template("img:2"), observed)
    objs = objects(plan)
    assert objs[("Deployment", "fr1-blue")]["spec"]["template"] == cluster["fr1-blue"]["spec"]["template"]
    green = objs[("Deployment", "fr1-green")]
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == "img:2"
    assert objs[("Service", "fr1")]["spec"]["selector"]["fdp.io/color"] == "blue"
    # the stable revision serves: Ready stays True while Reconciling says a change rolls out
    assert plan.available and plan.progressing
    got = {
        t: s
        for t, s, _, _ in cond.router_status(
            cond.RouterObservation(policy_name="pol", nodes_selected=1, nodes_ready=1, rollout=plan.rollout),
            "serving",
        )
    }
    assert got["Ready"] == "True" and got["Reconciling"] == "True" and got["Stalled"] == "False"


def test_an_aborted_rollout_keeps_ready_true_with_stalled_true() -> None:
    r = router(strategy="BlueGreen", autoPromotionEnabled=False)
    first = render_workloads(r, template("img:1"), ObservedState(now=NOW))
    cluster = settle(first)
    obs = ObservedState(now=NOW, deployments=cluster, services=services(first), previous_rollout_status={})
    steady = render_workloads(r, template("img:1"), obs)
    obs = ObservedState(
        now=NOW, deployments=cluster, services=services(steady), previous_rollout_status=steady.rollout_status
    )
    rolling = render_workloads(r, template("img:2"), obs)
    aborted_router = router({"fdp.io/abort": "t1"}, strategy="BlueGreen", autoPromotionEnabled=False)
    obs = ObservedState(
        now=NOW + timedelta(seconds=5),
        deployments=settle(rolling, cluster),
        services=services(rolling),
        previous_rollout_status=rolling.rollout_status,
    )
    plan = render_workloads(aborted_router, template("img:2"), obs)
    assert plan.stalled_reason == "Aborted" and plan.available
    assert scaled(plan)["fr1-green"] == 0
    got = {
        t: (s, reason)
        for t, s, reason, _ in cond.router_status(
            cond.RouterObservation(policy_name="pol", nodes_selected=1, nodes_ready=1, rollout=plan.rollout),
            "serving",
        )
    }
    assert got["Ready"][0] == "True" and got["Stalled"] == ("True", "RolloutStalled")
    assert got["Reconciling"][0] == "False"


def test_canary_pods_are_tracked_and_one_service_selects_both_tracks() -> None:
    r = router(strategy="Canary", steps=[{"setWeight": 25}, {"pause": {}}])
    first = render_workloads(r, template("img:1"), ObservedState(now=NOW))
    cluster = settle(first)
    steady = render_workloads(r, template("img:1"), ObservedState(now=NOW, deployments=cluster))
    obs = ObservedState(now=NOW, deployments=cluster, previous_rollout_status=steady.rollout_status)
    plan = render_workloads(r, template("img:2"), obs)
    objs = objects(plan)
    canary = objs[("Deployment", "fr1-canary")]
    assert (scaled(plan)["fr1-stable"], scaled(plan)["fr1-canary"]) == (3, 1)
    assert canary["spec"]["selector"]["matchLabels"]["fdp.io/track"] == "canary"
    svc = objs[("Service", "fr1")]["spec"]["selector"]
    assert "fdp.io/track" not in svc and "fdp.io/color" not in svc
    assert ("Service", "fr1-preview") not in objs and plan.hpa_target == "fr1-stable"


def test_switching_from_rolling_update_keeps_the_plain_deployment_until_the_new_one_serves() -> None:
    plain = render_workloads(router(strategy="RollingUpdate"), template("img:1"), ObservedState(now=NOW))
    cluster = settle(plain)
    r = router(strategy="BlueGreen")
    plan = render_workloads(r, template("img:1"), ObservedState(now=NOW, deployments=cluster))
    assert plan.prune == [], "the plain Deployment serves until blue is available"
    assert "fdp.io/color" not in objects(plan)[("Service", "fr1")]["spec"]["selector"]
    cluster.update(settle(plan, cluster))
    plan = render_workloads(r, template("img:1"), ObservedState(now=NOW, deployments=cluster))
    assert ("Deployment", "fr1") in plan.prune
    assert objects(plan)[("Service", "fr1")]["spec"]["selector"]["fdp.io/color"] == "blue"


def test_switching_blue_green_to_canary_with_a_new_image_hands_over_then_walks_the_steps() -> None:
    bg = router(strategy="BlueGreen")
    first = render_workloads(bg, template("img:1"), ObservedState(now=NOW))
    cluster = settle(first)
    obs = after(first, cluster)
    steady = render_workloads(bg, template("img:1"), obs)
    assert steady.available and not steady.progressing
    blue_rev = cluster["fr1-blue"]["metadata"]["annotations"][REVISION_ANNOTATION]

    cn = router(strategy="Canary", steps=[{"setWeight": 25}, {"pause": {}}])
    obs = after(steady, cluster)
    plan = render_workloads(cn, template("img:2"), obs)
    objs = objects(plan)
    # hand-over: stable starts with blue's template (the stable revision); no canary yet
    stable = objs[("Deployment", "fr1-stable")]
    assert image(stable) == "img:1"
    labels = stable["spec"]["template"]["metadata"]["labels"]
    assert labels["fdp.io/track"] == "stable" and "fdp.io/color" not in labels
    assert stable["metadata"]["annotations"][REVISION_ANNOTATION] == blue_rev
    assert ("Deployment", "fr1-canary") not in objs and scaled(plan) == {"fr1-stable": 4}
    assert objs[("Service", "fr1")]["spec"]["selector"]["fdp.io/color"] == "blue", "blue serves meanwhile"
    assert ("Deployment", "fr1-blue") not in plan.prune and plan.hpa_target == "fr1-blue"
    assert plan.available and plan.progressing and plan.rollout_status["switchingFrom"] == "fr1-blue"

    cluster.update(settle(plan, cluster))
    obs = after(plan, cluster)
    plan = render_workloads(cn, template("img:2"), obs)
    objs = objects(plan)
    canary = objs[("Deployment", "fr1-canary")]
    assert image(canary) == "img:2"
    assert scaled(plan) == {"fr1-stable": 3, "fr1-canary": 1}
    assert objs[("Deployment", "fr1-stable")]["spec"]["template"] == cluster["fr1-stable"]["spec"]["template"]
    assert "fdp.io/color" not in objs[("Service", "fr1")]["spec"]["selector"]
    assert ("Deployment", "fr1-blue") in plan.prune and plan.hpa_target == "fr1-stable"
    assert plan.rollout_status["currentStepIndex"] == 0 and "switchingFrom" not in plan.rollout_status


def test_switching_rolling_update_to_canary_with_a_new_image_hands_the_plain_deployment_over() -> None:
    plain = render_workloads(router(strategy="RollingUpdate"), template("img:1"), ObservedState(now=NOW))
    cluster = settle(plain)
    cn = router(strategy="Canary", steps=[{"setWeight": 50}, {"pause": {}}])
    obs = ObservedState(now=NOW, deployments=cluster, previous_rollout_status=plain.rollout_status)
    plan = render_workloads(cn, template("img:2"), obs)
    objs = objects(plan)
    assert image(objs[("Deployment", "fr1-stable")]) == "img:1"
    assert ("Deployment", "fr1-canary") not in objs and plan.prune == [] and plan.hpa_target == "fr1"
    assert plan.replicas["available"] == 4, "the plain Deployment serves"
    cluster.update(settle(plan, cluster))
    obs = ObservedState(now=NOW, deployments=cluster, previous_rollout_status=plan.rollout_status)
    plan = render_workloads(cn, template("img:2"), obs)
    assert scaled(plan) == {"fr1-stable": 2, "fr1-canary": 2} and ("Deployment", "fr1") in plan.prune


def test_switching_canary_to_blue_green_with_a_new_image_keeps_both_tracks_serving_until_blue_is_up() -> None:
    cn = router(strategy="Canary", steps=[{"setWeight": 50}, {"pause": {}}])
    first = render_workloads(cn, template("img:1"), ObservedState(now=NOW))
    cluster = settle(first)
    steady = render_workloads(cn, template("img:1"), ObservedState(now=NOW, deployments=cluster))
    obs = ObservedState(now=NOW, deployments=cluster, previous_rollout_status=steady.rollout_status)
    rolling = render_workloads(cn, template("img:2"), obs)  # a canary in progress
    cluster.update(settle(rolling, cluster))
    bg = router(strategy="BlueGreen")
    obs = after(rolling, cluster)
    plan = render_workloads(bg, template("img:2"), obs)
    objs = objects(plan)
    blue = objs[("Deployment", "fr1-blue")]
    assert image(blue) == "img:1"
    labels = blue["spec"]["template"]["metadata"]["labels"]
    assert labels["fdp.io/color"] == "blue" and "fdp.io/track" not in labels
    assert "fdp.io/color" not in objs[("Service", "fr1")]["spec"]["selector"], "stable keeps serving"
    assert plan.prune == [("Deployment", "fr1-canary")], "the canary of the abandoned rollout goes at once"
    assert ("Service", "fr1-preview") not in objs and ("Deployment", "fr1-green") not in objs
    del cluster["fr1-canary"]
    cluster.update(settle(plan, cluster))
    obs = after(plan, cluster)
    plan = render_workloads(bg, template("img:2"), obs)
    objs = objects(plan)
    assert image(objs[("Deployment", "fr1-green")]) == "img:2"
    assert objs[("Service", "fr1")]["spec"]["selector"]["fdp.io/color"] == "blue"
    assert objs[("Service", "fr1-preview")]["spec"]["selector"]["fdp.io/color"] == "green"
    assert plan.prune == [("Deployment", "fr1-stable")] and plan.hpa_target == "fr1-blue"


def test_with_an_hpa_its_count_is_sent_once_to_create_the_deployment_and_never_again() -> None:
    r = router(strategy="BlueGreen", autoscaled=True)
    first = render_workloads(r, template("img:1"), ObservedState(now=NOW))
    assert scaled(first) == {"fr1-blue": 2}  # minReplicas, to create it
    cluster = settle(first)
    cluster["fr1-blue"]["spec"]["replicas"] = 6  # the HPA scaled up
    hpa = {"status": {"currentReplicas": 6, "desiredReplicas": 6}}
    plan = render_workloads(r, template("img:1"), ObservedState(now=NOW, deployments=cluster, hpa=hpa))
    assert scaled(plan) == {}, "the HPA's count is never written back (not even the same value)"
    assert "replicas" not in objects(plan)[("Deployment", "fr1-blue")]["spec"]
    assert plan.replicas["desired"] == 6
    obs = ObservedState(
        now=NOW,
        deployments=cluster,
        hpa=hpa,
        services=services(plan),
        previous_rollout_status=plan.rollout_status,
    )
    update = render_workloads(r, template("img:2"), obs)
    assert scaled(update) == {"fr1-green": 6}, "the preview gets the HPA's current count"
