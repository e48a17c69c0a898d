"""Blue/green: preview on the inactive color, gate, switch the Service, retire the old color."""

from __future__ import annotations

from fdp_operator.rollout.types import Analysis, AnalysisVerdict

from .sim import Sim, rollout_spec


def bluegreen(**fields) -> Sim:
    return Sim(spec=rollout_spec(strategy="BlueGreen", **fields))


def deployed(sim: Sim) -> Sim:
    """Bring rev1 up and settle it: blue active, Healthy."""
    sim.run()
    assert sim.active_color == "blue" and sim.last.ready
    return sim


def test_the_first_revision_goes_straight_to_blue_and_becomes_healthy() -> None:
    sim = bluegreen()
    first = sim.reconcile()
    assert first.active_role == "blue" and sim.replicas_of("blue") == 4
    assert not first.ready and first.progressing
    assert sim.condition("Ready") == ("False", "Progressing")
    assert sim.condition("Reconciling")[0] == "True"
    sim.run()
    assert sim.last.ready and not sim.last.progressing
    assert sim.status["stableRevision"] == "rev1" and sim.status["phase"] == "Healthy"
    assert sim.condition("Ready")[0] == "True" and sim.condition("Reconciling")[0] == "False"


def test_an_update_previews_on_green_then_switches_the_service_and_scales_blue_down_after_the_delay() -> None:
    sim = deployed(bluegreen(scaleDownDelaySeconds=30))
    sim.revision = "rev2"
    d = sim.reconcile()
    assert d.active_role == "blue" and d.preview_role == "green"
    assert sim.revision_of("green") == "rev2" and sim.replicas_of("green") == 4
    assert sim.revision_of("blue") == "rev1" and sim.replicas_of("blue") == 4
    assert sim.status["previewColor"] == "green" and sim.condition("Ready")[0] == "True"
    sim.kubelet()
    d = sim.reconcile()
    assert d.active_role == "green" and d.hpa_role == "green"
    assert sim.status["activeColor"] == "green" and sim.status["stableRevision"] == "rev2"
    assert sim.replicas_of("blue") == 4, "the old color keeps its pods during scaleDownDelaySeconds"
    assert 29 <= d.requeue_after <= 30
    sim.tick(29)
    sim.reconcile()
    assert sim.replicas_of("blue") == 4
    sim.tick(1)
    sim.reconcile()
    assert sim.replicas_of("blue") == 0 and sim.revision_of("blue") == "rev1"
    assert sim.last.ready and sim.status["phase"] == "Healthy"


def test_preview_replicas_are_scaled_to_full_size_before_the_switch() -> None:
    sim = deployed(bluegreen(previewReplicas=1))
    sim.revision = "rev2"
    sim.reconcile()
    assert sim.replicas_of("green") == 1
    sim.kubelet()
    d = sim.reconcile()
    assert d.active_role == "blue", "not switched while the preview runs only 1 of 4"
    assert sim.replicas_of("green") == 4 and sim.condition("Reconciling") == ("True", "Progressing")
    assert sim.status["message"].startswith("promoting rev2: scaling green to 4")
    sim.kubelet()
    assert sim.reconcile().active_role == "green"


def test_manual_promotion_waits_paused_until_promoted_and_acts_once_per_token() -> None:
    sim = deployed(bluegreen(autoPromotionEnabled=False))
    sim.revision = "rev2"
    sim.run()
    for _ in range(3):
        sim.tick(3600)
        d = sim.reconcile()
        assert d.active_role == "blue"
    assert sim.condition("Paused") == ("True", "WaitingForPromotion")
    assert sim.status["phase"] == "Paused" and "fdp-operator promote" in d.message
    assert sim.condition("Stalled")[0] == "False", "a pause is not a failure (no progress deadline)"
    sim.annotations["fdp.io/promote"] = "tok-1"
    assert sim.reconcile().active_role == "green"
    assert sim.status["handledPromote"] == "tok-1"
    # The same token left in place (e.g. in Git) does not promote the next revision.
    sim.revision = "rev3"
    sim.run()
    assert sim.active_color == "green" and sim.condition("Paused")[1] == "WaitingForPromotion"


def test_auto_promotion_seconds_wait_after_the_preview_is_available() -> None:
    sim = deployed(bluegreen(autoPromotionSeconds=30))
    sim.revision = "rev2"
    sim.reconcile()
    sim.kubelet()
    d = sim.reconcile()
    assert d.active_role == "blue" and sim.condition("Paused") == ("True", "AutoPromotionPending")
    assert 29 <= d.requeue_after <= 30
    sim.tick(29)
    assert sim.reconcile().active_role == "blue"
    sim.tick(1)
    assert sim.reconcile().active_role == "green"


def test_auto_promotion_seconds_are_ignored_with_auto_promotion_off_and_the_message_says_so() -> None:
    sim = deployed(bluegreen(autoPromotionEnabled=False, autoPromotionSeconds=5))
    sim.revision = "rev2"
    sim.run()
    sim.tick(600)
    d = sim.reconcile()
    assert d.active_role == "blue" and "autoPromotionSeconds only applies" in d.message


def test_spec_paused_holds_the_promotion_until_resumed() -> None:
    sim = deployed(bluegreen(paused=True))
    sim.revision = "rev2"
    sim.run()
    assert sim.active_color == "blue" and sim.condition("Paused") == ("True", "PausedBySpec")
    sim.spec = rollout_spec(strategy="BlueGreen", paused=False)
    assert sim.reconcile().active_role == "green"


def test_abort_zeroes_the_preview_keeps_blue_serving_and_stays_degraded_until_the_spec_changes() -> None:
    sim = deployed(bluegreen(autoPromotionEnabled=False))
    sim.revision = "rev2"
    sim.run()
    sim.annotations["fdp.io/abort"] = "a1"
    d = sim.reconcile()
    assert sim.replicas_of("green") == 0 and sim.replicas_of("blue") == 4
    assert sim.revision_of("blue") == "rev1" and d.active_role == "blue"
    assert d.stalled_reason == "Aborted" and sim.status["phase"] == "Degraded"
    assert sim.condition("Stalled") == ("True", "RolloutStalled") and sim.status["abortReason"] == "Aborted"
    assert sim.condition("Ready")[0] == "True", "stable keeps serving"
    assert sim.condition("Reconciling")[0] == "False", "kstatus must read Failed, not InProgress"
    assert "To retry, change the pod template" in d.message and "rev1" in d.message
    for _ in range(3):  # stays put, no flapping, and a promote now does nothing
        sim.annotations["fdp.io/promote"] = f"p{_}"
        sim.tick(60)
        sim.kubelet()
        d = sim.reconcile()
        assert d.stalled_reason == "Aborted" and sim.active_color == "blue" and sim.replicas_of("green") == 0
    sim.revision = "rev3"
    d = sim.reconcile()
    assert d.stalled_reason is None and sim.revision_of("green") == "rev3" and sim.replicas_of("green") == 4


def test_a_preview_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline() -> None:
    sim = deployed(bluegreen(progressDeadlineSeconds=60))
    sim.revision = "rev-bad"
    sim.bad_revisions.add("rev-bad")
    sim.run(rounds=30, seconds=1)
    assert sim.last.stalled_reason is None, "29 s in: still within the deadline"
    sim.run(rounds=40, seconds=1)
    d = sim.last
    assert d.stalled_reason == "ProgressDeadlineExceeded"
    assert sim.replicas_of("green") == 0 and sim.replicas_of("blue") == 4 and sim.active_color == "blue"
    assert sim.condition("Ready")[0] == "True"
    assert sim.condition("Stalled") == ("True", "RolloutStalled")
    assert sim.status["abortReason"] == "ProgressDeadlineExceeded"


def test_a_failed_analysis_rolls_back_before_promotion() -> None:
    sim = deployed(bluegreen())
    sim.revision = "rev2"
    sim.analysis = Analysis(AnalysisVerdict.FAILED, "error rate 0.31 > 0.05")
    sim.run()
    assert sim.last.stalled_reason == "AnalysisFailed" and "0.31" in sim.last.message
    assert sim.active_color == "blue" and sim.replicas_of("green") == 0


def test_abort_with_no_rollout_in_progress_changes_nothing() -> None:
    sim = deployed(bluegreen())
    sim.annotations["fdp.io/abort"] = "a1"
    d = sim.reconcile()
    assert d.stalled_reason is None and sim.replicas_of("blue") == 4 and d.ready
    assert sim.status["handledAbort"] == "a1" and any("abort ignored" in e for e in d.events)


def test_a_restart_after_the_service_switched_but_before_status_was_written_still_waits_the_delay() -> None:
    sim = deployed(bluegreen(scaleDownDelaySeconds=30))
    sim.revision = "rev2"
    sim.reconcile()
    sim.kubelet()
    before = dict(sim.status)
    sim.reconcile()  # switches; pretend the status write was lost in a crash
    sim.status = before
    assert sim.active_color == "green"
    sim.tick(5)
    d = sim.reconcile()
    assert d.active_role == "green" and sim.replicas_of("blue") == 4
    sim.tick(31)
    sim.reconcile()
    assert sim.replicas_of("blue") == 0


def test_with_an_hpa_the_active_color_count_is_never_written_and_the_preview_gets_the_scaled_size() -> None:
    sim = Sim(spec=rollout_spec(strategy="BlueGreen"), autoscaled=True, replicas=2)
    sim.run()
    sim.hpa_scales("blue", 7)
    sim.run()
    assert sim.replicas_of("blue") == 7
    sim.revision = "rev2"
    d = sim.reconcile()
    blue = next(i for i in d.deployments if i.role == "blue")
    assert blue.replicas is None, "the HPA owns the active color's replicas"
    assert sim.replicas_of("green") == 7
    sim.kubelet()
    d = sim.reconcile()
    assert d.hpa_role == "green" and sim.replicas_of("green") == 7


def test_the_same_inputs_give_the_same_decision() -> None:
    sim = deployed(bluegreen(autoPromotionSeconds=30))
    sim.revision = "rev2"
    sim.reconcile()
    sim.kubelet()
    sim.reconcile()
    from fdp_operator.rollout import decide

    a, b = decide(sim.strategy, sim.input()), decide(sim.strategy, sim.input())
    assert a == b
    assert a.status.to_dict() == sim.status
