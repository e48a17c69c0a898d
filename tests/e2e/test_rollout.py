"""Progressive delivery against a real API server: blue/green, canary, promote, abort, rollback,
operator restarts, HPA, and what Argo CD (Lua) and kstatus say at each phase.

The operator runs as a local process (``operator_runner``, resync 1 s); kwok simulates the
pods, so Deployments really roll out and become Available. A "bad" revision asks for more CPU
than any simulated node has: its pods stay Pending and never become ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.gitops.health import kstatus, kstatus_binary, lua_health

from .conftest import OPT_IN, eventually, federated_router, hospital_node, privacy_policy

BIN = Path(sys.executable).parent
TIMEOUT = 90
BAD_RESOURCES = {"requests": {"cpu": "5000", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}


# ---------------------------------------------------------------- helpers


def setup_router(kube, namespace, demo_nodes, name: str = "fr", **spec: Any) -> None:
    """One healthy demo hospital node, a policy, and a FederatedRouter with a postgres ledger."""
    demo_nodes.tls_secrets(namespace)
    node = demo_nodes.start(f"{namespace}-h0")
    kube.apply(
        namespace,
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "ledger-dsn", "labels": OPT_IN},
                "stringData": {"dsn": "postgresql://router@db/ledger"},
            },
            hospital_node("h0", node.endpoint, tls={"caSecretRef": {"name": "hospital-ca"}}),
            privacy_policy(),
            federated_router(
                name,
                image="ghcr.io/federated-dp-llm/router:1",
                ledger={"backend": "postgres", "dsnSecretRef": {"name": "ledger-dsn", "key": "dsn"}},
                **spec,
            ),
        ],
    )


def fr(kube, namespace, name: str = "fr") -> dict[str, Any]:
    obj = kube.get(namespace, "fr", name)
    assert obj is not None
    return obj


def rollout(kube, namespace, name: str = "fr") -> dict[str, Any]:
    return (fr(kube, namespace, name).get("status") or {}).get("rollout") or {}


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions", [])}


def deployment(kube, namespace, name: str) -> dict[str, Any]:
    dep = kube.get(namespace, "deployment", name)
    assert dep is not None, f"deployment {name} missing"
    return dep


def replicas(kube, namespace, name: str) -> int:
    return int(deployment(kube, namespace, name)["spec"]["replicas"])


def revision(kube, namespace, name: str) -> str:
    return str(deployment(kube, namespace, name)["metadata"]["annotations"]["fdp.io/revision"])


def patch(cluster, namespace, body: dict[str, Any], name: str = "fr") -> None:
    cluster.kubectl("patch", "fr", name, "-n", namespace, "--type", "merge", "-p", json.dumps(body))


def ctl(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "fdp-operator"), *args], capture_output=True, text=True, env=cluster.env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def wait_healthy(kube, namespace, name: str = "fr", timeout: float = TIMEOUT) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        obj = fr(kube, namespace, name)
        status = obj.get("status") or {}
        ro = status.get("rollout") or {}
        cs = conditions(obj)
        done = (
            status.get("observedGeneration") == obj["metadata"]["generation"]
            and cs.get("Ready", ("",))[0] == "True"
            and cs.get("Reconciling", ("",))[0] == "False"
            and ro.get("phase") == "Healthy"
            and ro.get("stableRevision") == ro.get("currentRevision")
        )
        return obj if done else None

    return eventually(ok, timeout=timeout, interval=0.3, what=f"fr/{name} healthy")


def verdicts(obj: dict[str, Any]) -> tuple[str, str]:
    """(Argo CD health, kstatus status) for a live object."""
    live = {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj}
    return lua_health(live)[0], kstatus(live)["status"]


@pytest.fixture(scope="session")
def kstatus_tool() -> Path:
    binary = kstatus_binary()
    if binary is None:
        pytest.skip("Go toolchain not installed: cannot build hack/kstatus")
    return binary


# ---------------------------------------------------------------- blue/green


def test_blue_green_switches_the_service_and_scales_the_old_color_down_after_the_delay(
    cluster, kube, namespace, operator_runner, demo_nodes, kstatus_tool
) -> None:
    setup_router(
        kube, namespace, demo_nodes, replicas=2, rollout={"strategy": "BlueGreen", "scaleDownDelaySeconds": 6}
    )
    first = wait_healthy(kube, namespace)
    assert first["status"]["rollout"]["activeColor"] == "blue"
    assert verdicts(first) == ("Healthy", "Current")
    old_rev = revision(kube, namespace, "fr-blue")
    assert kube.get(namespace, "service", "fr")["spec"]["selector"]["fdp.io/color"] == "blue"

    started = time.monotonic()
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    eventually(lambda: rollout(kube, namespace).get("activeColor") == "green", timeout=TIMEOUT, what="switch")
    switched = time.monotonic()
    new_rev = revision(kube, namespace, "fr-green")
    assert new_rev != old_rev and revision(kube, namespace, "fr-blue") == old_rev
    assert kube.get(namespace, "service", "fr")["spec"]["selector"]["fdp.io/color"] == "green"
    assert kube.get(namespace, "service", "fr-preview")["spec"]["selector"]["fdp.io/color"] == "blue"
    assert replicas(kube, namespace, "fr-blue") == 2, "the old color keeps its pods during the delay"
    eventually(lambda: replicas(kube, namespace, "fr-blue") == 0, timeout=30, what="blue scaled down")
    waited = time.monotonic() - switched
    assert waited >= 4, f"blue scaled down {waited:.1f}s after the switch, before scaleDownDelaySeconds"
    done = wait_healthy(kube, namespace)
    assert done["status"]["rollout"]["stableRevision"] == new_rev
    assert done["status"]["availableReplicas"] == 2

    def rollout_events() -> list[str]:
        events = kube.items(namespace, "events")
        return [e["message"] for e in events if e.get("reason") == "Rollout"]

    eventually(
        lambda: any("switched active Service to green" in m for m in rollout_events()),
        timeout=20,
        what="a Rollout event on the FederatedRouter",
    )
    print(f"\nblue/green rollout (2 replicas, 6 s scale-down delay): switch after {switched - started:.1f}s")


def test_manual_promotion_waits_until_promoted(
    cluster, kube, namespace, operator_runner, demo_nodes, kstatus_tool
) -> None:
    setup_router(
        kube,
        namespace,
        demo_nodes,
        replicas=2,
        rollout={"strategy": "BlueGreen", "autoPromotionEnabled": False},
    )
    wait_healthy(kube, namespace)
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    paused = eventually(
        lambda: (o := fr(kube, namespace)) and conditions(o).get("Paused", ("",))[0] == "True" and o,
        timeout=TIMEOUT,
        what="Paused=True",
    )
    assert conditions(paused)["Paused"][1] == "WaitingForPromotion"
    assert conditions(paused)["Ready"][0] == "True", "blue keeps serving while green waits"
    assert verdicts(paused) == ("Suspended", "InProgress")
    assert "fdp-operator promote" in paused["status"]["rollout"]["message"]
    time.sleep(4)
    assert rollout(kube, namespace)["activeColor"] == "blue", "no promotion without the user"
    assert kube.get(namespace, "service", "fr")["spec"]["selector"]["fdp.io/color"] == "blue"
    ctl(cluster, "promote", "fr", "-n", namespace)
    eventually(
        lambda: rollout(kube, namespace).get("activeColor") == "green", timeout=TIMEOUT, what="promotion"
    )
    assert kube.get(namespace, "service", "fr")["spec"]["selector"]["fdp.io/color"] == "green"
    out = ctl(cluster, "status", "fr", "-n", namespace).stdout
    assert "Active:      green" in out
    assert verdicts(wait_healthy(kube, namespace)) == ("Healthy", "Current")


def test_abort_ends_stalled_with_the_stable_color_untouched(
    cluster, kube, namespace, operator_runner, demo_nodes, kstatus_tool
) -> None:
    setup_router(
        kube,
        namespace,
        demo_nodes,
        replicas=2,
        rollout={"strategy": "BlueGreen", "autoPromotionEnabled": False},
    )
    wait_healthy(kube, namespace)
    blue_before = deployment(kube, namespace, "fr-blue")
    patch(cluster, namespace, {"spec": {"resources": BAD_RESOURCES}})
    eventually(
        lambda: rollout(kube, namespace).get("previewColor") == "green", timeout=TIMEOUT, what="preview"
    )
    rolling = fr(kube, namespace)
    assert verdicts(rolling) == ("Progressing", "InProgress")
    ctl(cluster, "abort", "fr", "-n", namespace)
    aborted = eventually(
        lambda: (o := fr(kube, namespace)) and conditions(o).get("Stalled", ("",))[0] == "True" and o,
        timeout=TIMEOUT,
        what="Stalled=True",
    )
    cs = conditions(aborted)
    assert cs["Ready"][0] == "True" and cs["Reconciling"][0] == "False"
    assert aborted["status"]["rollout"]["abortReason"] == "Aborted"
    assert "To retry, change the pod template" in aborted["status"]["rollout"]["message"]
    assert verdicts(aborted) == ("Degraded", "Failed")
    eventually(lambda: replicas(kube, namespace, "fr-green") == 0, timeout=30, what="green at 0")
    blue = deployment(kube, namespace, "fr-blue")
    assert blue["spec"]["template"] == blue_before["spec"]["template"]
    assert (
        blue["spec"]["replicas"] == 2
        and blue["metadata"]["generation"] == blue_before["metadata"]["generation"]
    )
    assert kube.get(namespace, "service", "fr")["spec"]["selector"]["fdp.io/color"] == "blue"
    time.sleep(3)  # stays put: no retry, no flapping
    assert conditions(fr(kube, namespace))["Stalled"] == ("True", "RolloutStalled")
    # changing the spec clears it: revert to the stable template
    patch(cluster, namespace, {"spec": {"resources": None}})
    wait_healthy(kube, namespace)
    assert conditions(fr(kube, namespace))["Stalled"][0] == "False"


# ---------------------------------------------------------------- canary


def promote_to_the_timed_pause(cluster, kube, namespace: str) -> None:
    """From the indefinite pause of steps [25 %, pause, 50 %, timed pause] on 4 replicas:
    promote, then the step index must climb (never flap back) to the timed pause at step 3
    with the 2/2 split."""
    ctl(cluster, "promote", "fr", "-n", namespace)
    seen: list[int] = []

    def at_timed_pause() -> bool:
        seen.append(int(rollout(kube, namespace).get("currentStepIndex", -1)))
        return seen[-1] == 3

    eventually(at_timed_pause, timeout=TIMEOUT, interval=0.1, what="timed pause step")
    assert seen == sorted(seen), f"the step index went backwards (flapping): {seen}"
    assert (replicas(kube, namespace, "fr-canary"), replicas(kube, namespace, "fr-stable")) == (2, 2)


def test_canary_walks_every_step_with_the_expected_split_and_pauses(
    cluster, kube, namespace, operator_runner, demo_nodes, kstatus_tool
) -> None:
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "3s"}}]
    setup_router(kube, namespace, demo_nodes, replicas=4, rollout={"strategy": "Canary", "steps": steps})
    wait_healthy(kube, namespace)
    old_rev = revision(kube, namespace, "fr-stable")
    started = time.monotonic()
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    at_pause = eventually(
        lambda: (o := fr(kube, namespace)) and o["status"]["rollout"].get("currentStepIndex") == 1 and o,
        timeout=TIMEOUT,
        what="indefinite pause step",
    )
    assert (replicas(kube, namespace, "fr-canary"), replicas(kube, namespace, "fr-stable")) == (1, 3)
    assert revision(kube, namespace, "fr-stable") == old_rev
    assert conditions(at_pause)["Paused"] == ("True", "WaitingForPromotion")
    assert verdicts(at_pause) == ("Suspended", "InProgress")
    time.sleep(3)
    assert rollout(kube, namespace)["currentStepIndex"] == 1, "an indefinite pause waits for a promote"
    promote_to_the_timed_pause(cluster, kube, namespace)
    svc = kube.get(namespace, "service", "fr")["spec"]["selector"]
    assert "fdp.io/track" not in svc, "one Service selects both tracks"
    done = wait_healthy(kube, namespace)
    assert done["status"]["rollout"]["stableRevision"] == revision(kube, namespace, "fr-stable") != old_rev
    eventually(lambda: replicas(kube, namespace, "fr-canary") == 0, timeout=30, what="canary drained")
    assert replicas(kube, namespace, "fr-stable") == 4
    assert verdicts(fr(kube, namespace)) == ("Healthy", "Current")
    print(f"\ncanary rollout with one manual promotion: {time.monotonic() - started:.1f}s")


def test_a_canary_that_never_becomes_ready_is_rolled_back_automatically(
    cluster, kube, namespace, operator_runner, demo_nodes, kstatus_tool
) -> None:
    steps = [{"setWeight": 50}, {"pause": {}}]
    setup_router(
        kube,
        namespace,
        demo_nodes,
        replicas=2,
        rollout={"strategy": "Canary", "steps": steps, "progressDeadlineSeconds": 8},
    )
    wait_healthy(kube, namespace)
    stable_before = deployment(kube, namespace, "fr-stable")
    patch(cluster, namespace, {"spec": {"resources": BAD_RESOURCES}})
    eventually(lambda: replicas(kube, namespace, "fr-canary") == 1, timeout=TIMEOUT, what="canary created")
    stalled = eventually(
        lambda: (o := fr(kube, namespace)) and conditions(o).get("Stalled", ("",))[0] == "True" and o,
        timeout=TIMEOUT,
        what="rollback",
    )
    assert stalled["status"]["rollout"]["abortReason"] == "ProgressDeadlineExceeded"
    assert conditions(stalled)["Ready"][0] == "True"
    assert verdicts(stalled) == ("Degraded", "Failed")
    eventually(lambda: replicas(kube, namespace, "fr-canary") == 0, timeout=30, what="canary at 0")
    eventually(lambda: replicas(kube, namespace, "fr-stable") == 2, timeout=30, what="stable restored")
    stable = deployment(kube, namespace, "fr-stable")
    assert stable["spec"]["template"] == stable_before["spec"]["template"], "stable untouched"


def test_an_operator_killed_mid_rollout_resumes_without_going_back(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    steps = [
        {"setWeight": 25},
        {"pause": {"duration": "6s"}},
        {"setWeight": 50},
        {"pause": {"duration": "2s"}},
    ]
    setup_router(kube, namespace, demo_nodes, replicas=4, rollout={"strategy": "Canary", "steps": steps})
    wait_healthy(kube, namespace)
    old_rev = revision(kube, namespace, "fr-stable")
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    eventually(lambda: rollout(kube, namespace).get("currentStepIndex") == 1, timeout=TIMEOUT, what="pause")
    operator_runner.proc.kill()  # SIGKILL: no graceful shutdown
    operator_runner.proc.wait(timeout=10)
    time.sleep(2)
    operator_runner.start()
    seen: list[int] = []
    split: set[tuple[int, int]] = set()

    def finished() -> bool:
        ro = rollout(kube, namespace)
        if ro.get("currentStepIndex") is not None:
            seen.append(int(ro["currentStepIndex"]))
        done = ro.get("phase") == "Healthy" and ro.get("stableRevision") == ro.get("currentRevision")
        if revision(kube, namespace, "fr-stable") == old_rev:  # before the final promotion
            split.add((replicas(kube, namespace, "fr-canary"), replicas(kube, namespace, "fr-stable")))
        return done

    eventually(finished, timeout=TIMEOUT, interval=0.2, what="rollout finished after restart")
    assert seen == sorted(seen), f"step index went backwards after the restart: {seen}"
    assert seen and seen[0] >= 1, f"resumed at the step it was on, not from the start: {seen}"
    assert (0, 4) not in split, f"the canary dropped back to zero mid-rollout: {split}"
    assert "Traceback" not in operator_runner.logs()


# ---------------------------------------------------------------- strategy switch


def test_switching_blue_green_to_canary_with_a_new_image_walks_every_canary_step(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    """The strategy in the spec that introduces a revision governs its rollout (docs/rollouts.md)."""
    steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "2s"}}]
    setup_router(kube, namespace, demo_nodes, replicas=4, rollout={"strategy": "BlueGreen"})
    wait_healthy(kube, namespace)
    old_rev = revision(kube, namespace, "fr-blue")
    patch(
        cluster,
        namespace,
        {
            "spec": {
                "image": "ghcr.io/federated-dp-llm/router:2",
                "rollout": {"strategy": "Canary", "steps": steps},
            }
        },
    )
    stable_revs: set[str] = set()

    def at_pause() -> dict[str, Any] | None:
        stable = kube.get(namespace, "deployment", "fr-stable")
        if stable is not None:
            stable_revs.add(stable["metadata"]["annotations"]["fdp.io/revision"])
        o = fr(kube, namespace)
        return o if (o.get("status") or {}).get("rollout", {}).get("currentStepIndex") == 1 else None

    paused = eventually(at_pause, timeout=TIMEOUT, interval=0.1, what="indefinite pause step")
    assert stable_revs == {old_rev}, f"stable ran the new revision before the steps: {stable_revs}"
    assert (replicas(kube, namespace, "fr-canary"), replicas(kube, namespace, "fr-stable")) == (1, 3)
    assert revision(kube, namespace, "fr-canary") != old_rev
    assert conditions(paused)["Paused"] == ("True", "WaitingForPromotion")
    assert "fdp.io/color" not in kube.get(namespace, "service", "fr")["spec"]["selector"]
    eventually(lambda: kube.get(namespace, "deployment", "fr-blue") is None, timeout=30, what="blue pruned")
    time.sleep(2)
    assert rollout(kube, namespace)["currentStepIndex"] == 1, "an indefinite pause waits for a promote"
    promote_to_the_timed_pause(cluster, kube, namespace)
    done = wait_healthy(kube, namespace)
    assert done["status"]["rollout"]["strategy"] == "Canary"
    assert done["status"]["rollout"]["stableRevision"] == revision(kube, namespace, "fr-stable") != old_rev
    eventually(lambda: replicas(kube, namespace, "fr-canary") == 0, timeout=30, what="canary drained")
    assert replicas(kube, namespace, "fr-stable") == 4
    assert kube.get(namespace, "deployment", "fr-green") is None
    eventually(
        lambda: any(
            "switched to Canary" in e["message"]
            for e in kube.items(namespace, "events")
            if e.get("reason") == "Rollout"
        ),
        timeout=20,
        what="a Rollout event about the switch",
    )


# ---------------------------------------------------------------- HPA


def test_a_rollout_started_while_the_hpa_scaled_up_keeps_the_scaled_size(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    setup_router(
        kube,
        namespace,
        demo_nodes,
        autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        rollout={"strategy": "BlueGreen", "scaleDownDelaySeconds": 2},
    )
    wait_healthy(kube, namespace)
    hpa = kube.get(namespace, "hpa", "fr")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fr-blue"
    # what the HPA does through the scale subresource (no metrics server on kwok)
    cluster.kubectl("scale", "deployment/fr-blue", "-n", namespace, "--replicas=5")
    time.sleep(3)
    assert replicas(kube, namespace, "fr-blue") == 5, "the operator must not reset the HPA's count"
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    eventually(lambda: rollout(kube, namespace).get("activeColor") == "green", timeout=TIMEOUT, what="switch")
    assert replicas(kube, namespace, "fr-green") == 5
    eventually(
        lambda: kube.get(namespace, "hpa", "fr")["spec"]["scaleTargetRef"]["name"] == "fr-green",
        timeout=30,
        what="HPA follows the active color",
    )
    eventually(lambda: replicas(kube, namespace, "fr-blue") == 0, timeout=30, what="blue scaled down")
    time.sleep(3)
    assert replicas(kube, namespace, "fr-green") == 5


# ---------------------------------------------------------------- timing (docs/benchmarks/rollouts.md)


@pytest.mark.skipif(os.environ.get("FDP_ROLLOUT_BENCH") != "1", reason="benchmark: set FDP_ROLLOUT_BENCH=1")
def test_rollout_durations(cluster, kube, namespace, make_operator, demo_nodes) -> None:
    make_operator(namespace)
    results: dict[str, list[float]] = {"BlueGreen": [], "Canary": []}
    specs = {
        "BlueGreen": {"strategy": "BlueGreen", "scaleDownDelaySeconds": 0},
        "Canary": {"strategy": "Canary", "steps": [{"setWeight": 25}, {"setWeight": 50}, {"setWeight": 75}]},
    }
    setup_router(kube, namespace, demo_nodes, name="bg", replicas=4, rollout=specs["BlueGreen"])
    kube.apply(
        namespace,
        federated_router(
            "cn",
            image="ghcr.io/federated-dp-llm/router:1",
            replicas=4,
            ledger={"backend": "postgres", "dsnSecretRef": {"name": "ledger-dsn", "key": "dsn"}},
            rollout=specs["Canary"],
        ),
    )
    for name in ("bg", "cn"):
        wait_healthy(kube, namespace, name)
    for i in range(int(os.environ.get("FDP_ROLLOUT_BENCH_RUNS", "3"))):
        for name, strategy in (("bg", "BlueGreen"), ("cn", "Canary")):
            t0 = time.monotonic()
            patch(
                cluster, namespace, {"spec": {"image": f"ghcr.io/federated-dp-llm/router:{i + 2}"}}, name=name
            )
            eventually(
                lambda n=name: (
                    fr(kube, namespace, n)["metadata"]["generation"]
                    == fr(kube, namespace, n)["status"]["observedGeneration"]
                ),
                timeout=30,
            )
            wait_healthy(kube, namespace, name, timeout=180)
            results[strategy].append(time.monotonic() - t0)
    out = Path(os.environ.get("FDP_ROLLOUT_BENCH_OUT", "/dev/stdout"))
    with out.open("a") as f:
        f.write(json.dumps({k: [round(v, 2) for v in vs] for k, vs in results.items()}) + "\n")


def test_a_canary_beside_an_hpa_scaled_stable_never_resets_its_count(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    setup_router(
        kube,
        namespace,
        demo_nodes,
        autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 8},
        rollout={"strategy": "Canary", "steps": [{"setWeight": 20}, {"pause": {}}]},
    )
    wait_healthy(kube, namespace)
    assert kube.get(namespace, "hpa", "fr")["spec"]["scaleTargetRef"]["name"] == "fr-stable"
    cluster.kubectl("scale", "deployment/fr-stable", "-n", namespace, "--replicas=5")
    patch(cluster, namespace, {"spec": {"image": "ghcr.io/federated-dp-llm/router:2"}})
    eventually(lambda: rollout(kube, namespace).get("currentStepIndex") == 1, timeout=TIMEOUT, what="pause")
    # 5 stable pods owned by the HPA; 20% of the pods on the canary -> 1 canary beside them
    assert (replicas(kube, namespace, "fr-canary"), replicas(kube, namespace, "fr-stable")) == (1, 5)
    ctl(cluster, "promote", "fr", "-n", namespace, "--full")
    done = wait_healthy(kube, namespace)
    assert revision(kube, namespace, "fr-stable") == done["status"]["rollout"]["stableRevision"]
    eventually(lambda: replicas(kube, namespace, "fr-canary") == 0, timeout=30, what="canary drained")
    assert replicas(kube, namespace, "fr-stable") == 5
