"""Canary: walk the steps with replica ratios, pause, promote, abort, roll back."""

from __future__ import annotations

from fdp_operator.rollout import decide
from fdp_operator.rollout.types import Analysis, AnalysisVerdict

from .sim import Sim, rollout_spec

STEPS = [
    {"setWeight": 10},
    {"pause": {}},
    {"setWeight": 50},
    {"pause": {"duration": "30s"}},
]


def canary(replicas: int = 10, steps=STEPS, **fields) -> Sim:
    sim = Sim(spec=rollout_spec(strategy="Canary", steps=steps, **fields), replicas=replicas)
    sim.run()
    assert sim.last.ready and sim.revision_of("stable") == "rev1"
    return sim


def split(sim: Sim) -> tuple[int, int]:
    return sim.replicas_of("canary"), sim.replicas_of("stable")


def test_the_first_revision_goes_straight_to_stable() -> None:
    sim = canary()
    assert sim.replicas_of("stable") == 10 and "canary" not in sim.deployments
    assert sim.status["phase"] == "Healthy" and sim.status["stableRevision"] == "rev1"


def test_a_canary_walks_every_step_with_the_expected_split_and_pauses() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.reconcile()
    assert split(sim) == (1, 9) and sim.revision_of("canary") == "rev2"
    assert sim.revision_of("stable") == "rev1" and sim.status["currentStepIndex"] == 0
    assert sim.status["canaryWeight"] == 10 and sim.condition("Ready")[0] == "True"
    sim.run()
    # step 2: an indefinite pause holds for as long as it takes
    for _ in range(3):
        sim.tick(3600)
        sim.kubelet()
        d = sim.reconcile()
    assert split(sim) == (1, 9) and sim.status["currentStepIndex"] == 1
    assert sim.condition("Paused") == ("True", "WaitingForPromotion") and sim.status["phase"] == "Paused"
    assert "fdp-operator promote" in d.message
    sim.annotations["fdp.io/promote"] = "p1"
    sim.reconcile()
    assert split(sim) == (5, 5) and sim.status["currentStepIndex"] == 2
    sim.kubelet()
    d = sim.reconcile()
    assert sim.status["currentStepIndex"] == 3 and sim.condition("Paused") == ("True", "CanaryPauseStep")
    assert 29 <= d.requeue_after <= 30
    sim.tick(20)
    sim.reconcile()
    assert sim.status["currentStepIndex"] == 3
    sim.tick(10)
    d = sim.reconcile()
    # every step done: stable takes the new template, the canary serves meanwhile
    assert sim.revision_of("stable") == "rev2" and sim.replicas_of("stable") == 10
    assert sim.replicas_of("canary") == 5 and d.ready
    d = sim.reconcile()
    assert sim.replicas_of("canary") == 5, "the canary drains only once stable is Available"
    assert d.ready and d.progressing
    sim.kubelet()
    d = sim.reconcile()
    assert split(sim) == (0, 10) and d.ready and not d.progressing
    assert sim.status["stableRevision"] == "rev2" and sim.status["phase"] == "Healthy"


def test_promote_full_skips_every_remaining_step() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    assert sim.status["currentStepIndex"] == 1
    sim.annotations["fdp.io/promote"] = "full:x"
    sim.reconcile()
    assert sim.revision_of("stable") == "rev2"
    sim.run()
    assert split(sim) == (0, 10) and sim.status["stableRevision"] == "rev2"


def test_abort_drains_the_canary_restores_stable_and_survives_a_scale_up() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.annotations["fdp.io/abort"] = "a1"
    d = sim.reconcile()
    assert split(sim) == (0, 10) and sim.revision_of("stable") == "rev1"
    assert d.stalled_reason == "Aborted" and sim.condition("Ready")[0] == "True"
    assert sim.condition("Reconciling")[0] == "False" and sim.status["phase"] == "Degraded"
    sim.replicas = 20  # e.g. spec.replicas raised after the abort
    sim.run()
    assert split(sim) == (0, 20), "an aborted canary stays at 0 (Argo Rollouts #4973)"
    assert sim.last.stalled_reason == "Aborted"


def test_abort_wins_over_a_pending_full_promotion() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.annotations.update({"fdp.io/promote": "full:1", "fdp.io/abort": "a1"})
    d = sim.reconcile()
    assert d.stalled_reason == "Aborted" and sim.revision_of("stable") == "rev1"


def test_a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline() -> None:
    sim = canary(progressDeadlineSeconds=30)
    sim.revision = "bad"
    sim.bad_revisions.add("bad")
    sim.run(rounds=20)
    assert sim.last.stalled_reason is None and split(sim) == (1, 9)
    sim.run(rounds=20)
    assert sim.last.stalled_reason == "ProgressDeadlineExceeded"
    assert split(sim) == (0, 10) and sim.revision_of("stable") == "rev1"
    assert "revision bad" in sim.last.message and "To retry" in sim.last.message


def test_a_failed_analysis_rolls_back() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.analysis = Analysis(AnalysisVerdict.FAILED, "error rate 0.2 > 0.05")
    sim.run()
    assert sim.last.stalled_reason == "AnalysisFailed" and split(sim) == (0, 10)


def test_reverting_the_spec_to_the_stable_revision_ends_the_canary_without_failure() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.revision = "rev1"
    d = sim.reconcile()
    assert split(sim) == (0, 10) and d.stalled_reason is None


def test_a_new_revision_during_a_canary_restarts_the_steps() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.annotations["fdp.io/promote"] = "p"
    sim.run()
    assert sim.status["currentStepIndex"] == 3
    sim.revision = "rev3"
    sim.reconcile()
    assert (
        sim.status["currentStepIndex"] == 0 and sim.revision_of("canary") == "rev3" and split(sim) == (1, 9)
    )


def test_spec_paused_holds_the_current_step() -> None:
    sim = canary(steps=[{"setWeight": 10}, {"setWeight": 50}], paused=True)
    sim.revision = "rev2"
    sim.run()
    assert sim.status["currentStepIndex"] == 0 and sim.condition("Paused") == ("True", "PausedBySpec")
    sim.spec = rollout_spec(strategy="Canary", steps=[{"setWeight": 10}, {"setWeight": 50}])
    sim.run()
    assert sim.status["stableRevision"] == "rev2"


def test_an_operator_restart_mid_pause_resumes_from_status_without_flapping() -> None:
    sim = canary(steps=[{"setWeight": 20}, {"pause": {"duration": "60s"}}, {"setWeight": 60}])
    sim.revision = "rev2"
    sim.run(rounds=3)
    assert sim.status["currentStepIndex"] == 1
    sim.tick(40)
    # a new operator process: nothing in memory, only the status dict and the cluster
    restarted = Sim(
        spec=sim.spec,
        revision=sim.revision,
        replicas=sim.replicas,
        now=sim.now,
        deployments=dict(sim.deployments),
        status=dict(sim.status),
    )
    d = restarted.reconcile()
    assert restarted.status["currentStepIndex"] == 1 and split(restarted) == (2, 8)
    assert 18 <= d.requeue_after <= 21, "the pause timer continues, it does not restart"
    restarted.tick(20)
    restarted.reconcile()
    assert restarted.status["currentStepIndex"] == 2 and split(restarted) == (6, 4)


def test_with_an_hpa_stable_is_never_written_and_the_canary_follows_its_size() -> None:
    sim = Sim(
        spec=rollout_spec(strategy="Canary", steps=[{"setWeight": 10}, {"pause": {}}]),
        replicas=2,
        autoscaled=True,
    )
    sim.run()
    sim.hpa_scales("stable", 9)
    sim.revision = "rev2"
    d = sim.run()
    stable = next(i for i in d.deployments if i.role == "stable")
    assert stable.replicas is None and d.hpa_role == "stable"
    assert split(sim) == (1, 9)
    sim.hpa_scales("stable", 18)
    sim.run()
    assert split(sim) == (2, 18), "a rollout started while the HPA scaled up keeps the scaled size"


def test_the_same_inputs_give_the_same_decision() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    a, b = decide(sim.strategy, sim.input()), decide(sim.strategy, sim.input())
    assert a == b and a.status.to_dict() == sim.status
