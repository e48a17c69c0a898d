"""Switching spec.rollout.strategy: the strategy in the spec that introduces a revision governs it.

A switch first hands the *stable* revision over to the new strategy's Deployments (the old
strategy's serving Deployment keeps serving meanwhile), then rolls the desired revision out
under the new strategy from its first step. A rollout in progress under the old strategy is
abandoned (its new-revision pods go at once) and starts again from the beginning, unless it
was already past the point of no return (a canary whose stable Deployment took the new
template): then it only finishes.
"""

from __future__ import annotations

from .sim import Sim, rollout_spec

STEPS = [
    {"setWeight": 25},
    {"pause": {}},
    {"setWeight": 50},
    {"pause": {"duration": "30s"}},
]


def bluegreen(**fields) -> Sim:
    sim = Sim(spec=rollout_spec(strategy="BlueGreen", **fields))
    sim.run()
    assert sim.last.ready and sim.revision_of("blue") == "rev1" and sim.active_color == "blue"
    return sim


def canary(**fields) -> Sim:
    sim = Sim(spec=rollout_spec(strategy="Canary", steps=STEPS, **fields))
    sim.run()
    assert sim.last.ready and sim.revision_of("stable") == "rev1"
    return sim


def split(sim: Sim) -> tuple[int, int]:
    return sim.replicas_of("canary"), sim.replicas_of("stable")


def settle(sim: Sim):
    sim.kubelet()
    sim.tick()
    return sim.reconcile()


def test_blue_green_to_canary_with_a_new_image_walks_every_canary_step() -> None:
    sim = bluegreen()
    sim.switch("Canary", "rev2", steps=STEPS)
    d = sim.reconcile()
    # 1. hand-over: stable starts at the revision blue serves; blue keeps serving meanwhile
    assert sim.revision_of("stable") == "rev1", "the new revision must not go straight to stable"
    assert sim.replicas_of("stable") == 4 and sim.replicas_of("canary") == 0
    assert sim.revision_of("blue") == "rev1" and sim.active_color == "blue"
    assert d.ready and d.progressing and sim.condition("Reconciling") == ("True", "Progressing")
    assert sim.status["message"].startswith("switching to Canary") and sim.status["switchingFrom"]
    assert sim.status["stableRevision"] == "rev1" and sim.status["currentRevision"] == "rev2"
    # 2. stable is Available: blue goes, the canary starts at the first step
    d = settle(sim)
    assert "blue" not in sim.deployments and sim.active_color is None
    assert split(sim) == (1, 3) and sim.revision_of("canary") == "rev2"
    assert sim.revision_of("stable") == "rev1" and sim.status["currentStepIndex"] == 0
    assert sim.status["canaryWeight"] == 25
    assert any("canary rollout of revision rev2 started" in e for e in d.events)
    # 3. ... exactly like an image change under an unchanged Canary strategy
    settle(sim)
    assert sim.status["currentStepIndex"] == 1 and sim.condition("Paused") == ("True", "WaitingForPromotion")
    sim.tick(3600)
    sim.reconcile()
    assert sim.status["currentStepIndex"] == 1 and sim.revision_of("stable") == "rev1"
    sim.annotations["fdp.io/promote"] = "p1"
    sim.reconcile()
    assert split(sim) == (2, 2) and sim.status["currentStepIndex"] == 2
    settle(sim)
    assert sim.status["currentStepIndex"] == 3 and sim.condition("Paused") == ("True", "CanaryPauseStep")
    sim.tick(30)
    sim.reconcile()
    assert sim.revision_of("stable") == "rev2"
    d = settle(sim)
    assert split(sim) == (0, 4) and d.ready and not d.progressing
    assert sim.status["stableRevision"] == "rev2" and sim.status["phase"] == "Healthy"
    assert "switchingFrom" not in sim.status


def test_canary_to_blue_green_with_a_new_image_previews_on_the_inactive_color() -> None:
    sim = canary()
    sim.switch("BlueGreen", "rev2", autoPromotionEnabled=False)
    d = sim.reconcile()
    assert sim.revision_of("blue") == "rev1" and sim.replicas_of("blue") == 4
    assert "green" not in sim.deployments, "no preview before the hand-over"
    assert sim.revision_of("stable") == "rev1" and d.ready and d.progressing
    d = settle(sim)
    assert "stable" not in sim.deployments and d.active_role == "blue"
    assert sim.revision_of("green") == "rev2" and sim.status["previewColor"] == "green"
    sim.run()
    assert sim.active_color == "blue" and sim.condition("Paused") == ("True", "WaitingForPromotion")
    sim.annotations["fdp.io/promote"] = "p1"
    assert sim.reconcile().active_role == "green"
    assert sim.status["stableRevision"] == "rev2"


def test_a_strategy_switch_alone_hands_over_without_a_rollout() -> None:
    sim = bluegreen()
    sim.switch("Canary", steps=STEPS)
    d = sim.reconcile()
    assert sim.revision_of("stable") == "rev1" and sim.active_color == "blue" and "blue" in sim.deployments
    d = settle(sim)
    assert "blue" not in sim.deployments and "canary" not in sim.deployments
    assert d.ready and not d.progressing and sim.status["phase"] == "Healthy"


def test_switching_mid_blue_green_restarts_the_rollout_as_a_canary() -> None:
    sim = bluegreen(autoPromotionEnabled=False)
    sim.revision = "rev2"
    sim.run()
    assert sim.condition("Paused")[1] == "WaitingForPromotion" and sim.revision_of("green") == "rev2"
    sim.switch("Canary", steps=STEPS)
    sim.reconcile()
    assert "green" not in sim.deployments, "the old strategy's preview goes at once"
    assert sim.revision_of("stable") == "rev1" and sim.active_color == "blue"
    settle(sim)
    assert sim.status["currentStepIndex"] == 0 and split(sim) == (1, 3)


def test_switching_mid_canary_drops_the_canary_and_restarts_as_blue_green() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    assert sim.status["currentStepIndex"] == 1 and split(sim) == (1, 3)
    sim.switch("BlueGreen", autoPromotionEnabled=False)
    sim.reconcile()
    assert "canary" not in sim.deployments and sim.revision_of("blue") == "rev1"
    settle(sim)
    assert "stable" not in sim.deployments and sim.revision_of("green") == "rev2"
    assert sim.active_color == "blue"


def test_a_canary_past_its_last_step_finishes_under_the_new_strategy() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.annotations["fdp.io/promote"] = "full:p"
    sim.reconcile()
    assert sim.revision_of("stable") == "rev2", "stable took the new template: no way back"
    sim.switch("BlueGreen")
    sim.reconcile()
    assert sim.revision_of("blue") == "rev2" and "green" not in sim.deployments
    d = settle(sim)
    assert d.ready and not d.progressing and sim.status["stableRevision"] == "rev2"


def test_abort_during_the_hand_over_never_starts_the_new_revision() -> None:
    sim = bluegreen()
    sim.switch("Canary", "rev2", steps=STEPS)
    sim.reconcile()
    sim.annotations["fdp.io/abort"] = "a1"
    sim.reconcile()
    assert sim.status["handledAbort"] == "a1" and "blue" in sim.deployments
    d = settle(sim)
    assert d.stalled_reason == "Aborted" and split(sim) == (0, 4) and sim.revision_of("stable") == "rev1"
    assert "blue" not in sim.deployments and sim.condition("Ready")[0] == "True"


def test_switching_back_before_the_hand_over_is_done_keeps_the_old_strategy_serving() -> None:
    sim = bluegreen()
    sim.switch("Canary", "rev2", steps=STEPS)
    sim.reconcile()
    sim.switch("BlueGreen")
    d = sim.reconcile()
    assert "stable" not in sim.deployments and d.active_role == "blue"
    assert sim.revision_of("blue") == "rev1" and sim.revision_of("green") == "rev2"


def test_the_hand_over_keeps_the_hpa_scaled_size() -> None:
    sim = Sim(spec=rollout_spec(strategy="BlueGreen"), autoscaled=True, replicas=2)
    sim.run()
    sim.hpa_scales("blue", 6)
    sim.replicas = 6  # what the HPA reports
    sim.switch("Canary", "rev2", steps=STEPS)
    d = sim.reconcile()
    assert sim.replicas_of("stable") == 6 and d.hpa_role == "blue", "the HPA stays on what serves"
    d = settle(sim)
    assert d.hpa_role == "stable" and split(sim) == (2, 6)


def test_a_failed_revision_stays_failed_across_a_switch_until_the_template_changes() -> None:
    sim = canary()
    sim.revision = "rev2"
    sim.run()
    sim.annotations["fdp.io/abort"] = "a1"
    assert sim.reconcile().stalled_reason == "Aborted"
    sim.switch("BlueGreen")
    sim.run()
    assert sim.last.stalled_reason == "Aborted" and sim.active_color == "blue"
    assert "stable" not in sim.deployments and sim.replicas_of("green") == 0
    sim.revision = "rev3"
    d = sim.run()
    assert d.stalled_reason is None and sim.status["stableRevision"] == "rev3"


def test_an_operator_restart_mid_hand_over_resumes_it() -> None:
    sim = bluegreen()
    sim.switch("Canary", "rev2", steps=STEPS)
    sim.reconcile()
    restarted = Sim(
        spec=sim.spec,
        revision=sim.revision,
        now=sim.now,
        deployments=dict(sim.deployments),
        status=dict(sim.status),
        active_color=sim.active_color,
    )
    restarted.reconcile()
    assert restarted.revision_of("stable") == "rev1" and "blue" in restarted.deployments
    d = settle(restarted)
    assert restarted.status["currentStepIndex"] == 0 and split(restarted) == (1, 3)
    assert any("is retired" in e for e in d.events)
