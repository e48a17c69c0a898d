"""spec.scheduling through a whole reconcile: applied when valid; refused before anything is
written when not (the path of every invalid spec: Ready=False InvalidSpec naming the field)."""

from __future__ import annotations

from .test_security import _reconcile

TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "fdp-router", "effect": "NoSchedule"}


async def test_a_valid_scheduling_reaches_the_applied_deployment() -> None:
    kube, ready = await _reconcile({"scheduling": {"tolerations": [TOLERATION], "priorityClassName": "high"}})
    assert ready["reason"] != "InvalidSpec"
    pod = kube.objects[("Deployment", "fr1")]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [TOLERATION] and pod["priorityClassName"] == "high"


async def test_an_invalid_toleration_writes_nothing_and_names_the_field() -> None:
    bad = {**TOLERATION, "operator": "Exists"}  # Exists with a value
    kube, ready = await _reconcile({"scheduling": {"tolerations": [TOLERATION, bad]}})
    assert kube.writes == [], "a refused spec touches no child"
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.scheduling.tolerations.1.value: must be empty when operator is Exists" in ready["message"]
    stalled = next(c for c in kube.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
