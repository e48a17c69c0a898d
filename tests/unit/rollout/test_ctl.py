"""`fdp-operator promote/abort/pause/resume/status`: they only patch spec or annotations."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import pytest
from fdp_operator import ctl
from fdp_operator.rollout import intents


class FakeRouters:
    """The API edge: records patches, serves one object."""

    def __init__(self, obj: dict[str, Any] | None = None) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.obj = obj or {"metadata": {"name": "fr1", "namespace": "ns"}, "spec": {}}

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.obj

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((namespace, name, body))
        return self.obj


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fdp-operator")
    ctl.register(p.add_subparsers(dest="command"))
    return p


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeRouters:
    fake = FakeRouters()
    monkeypatch.setattr(ctl, "_connect", lambda context: (fake, "ctx-ns"))
    return fake


def run(*argv: str) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def test_promote_sets_a_fresh_promote_token_annotation_and_nothing_else(api: FakeRouters) -> None:
    assert run("promote", "fr1", "-n", "ns") == 0
    ((ns, name, body),) = api.patches
    assert (ns, name) == ("ns", "fr1")
    assert set(body) == {"metadata"} and set(body["metadata"]["annotations"]) == {"fdp.io/promote"}
    token = body["metadata"]["annotations"]["fdp.io/promote"]
    assert not token.startswith("full:")
    parsed = intents.parse(body["metadata"]["annotations"])
    assert parsed.promote == token and not parsed.promote_full


def test_promote_full_prefixes_the_token(api: FakeRouters) -> None:
    run("promote", "fr1", "--full")
    body = api.patches[0][2]
    assert intents.parse(body["metadata"]["annotations"]).promote_full
    assert api.patches[0][0] == "ctx-ns", "defaults to the kubeconfig context's namespace"


def test_two_promotes_use_different_tokens_so_each_acts_once(api: FakeRouters) -> None:
    run("promote", "fr1")
    run("promote", "fr1")
    a, b = (p[2]["metadata"]["annotations"]["fdp.io/promote"] for p in api.patches)
    assert a != b


def test_abort_sets_the_abort_annotation(api: FakeRouters) -> None:
    run("abort", "fr1")
    assert set(api.patches[0][2]["metadata"]["annotations"]) == {"fdp.io/abort"}


@pytest.mark.parametrize(("command", "paused"), [("pause", True), ("resume", False)])
def test_pause_and_resume_patch_only_spec_rollout_paused(
    api: FakeRouters, command: str, paused: bool
) -> None:
    run(command, "fr1")
    assert api.patches[0][2] == {"spec": {"rollout": {"paused": paused}}}


def test_no_command_ever_patches_status(api: FakeRouters) -> None:
    for argv in (
        ("promote", "fr1"),
        ("promote", "fr1", "--full"),
        ("abort", "fr1"),
        ("pause", "fr1"),
        ("resume", "fr1"),
    ):
        run(*argv)
    assert all("status" not in body for _, _, body in api.patches)


def test_status_prints_the_rollout_and_conditions(
    api: FakeRouters, capsys: pytest.CaptureFixture[str]
) -> None:
    api.obj = {
        "metadata": {"name": "fr1", "namespace": "ns", "generation": 4},
        "spec": {"rollout": {"strategy": "Canary", "steps": [{"setWeight": 10}, {"pause": {}}]}},
        "status": {
            "observedGeneration": 4,
            "rollout": {
                "strategy": "Canary",
                "phase": "Paused",
                "currentStepIndex": 1,
                "canaryWeight": 10,
                "pauseReason": "WaitingForPromotion",
                "message": "paused until promoted",
            },
            "conditions": [
                {"type": "Paused", "status": "True", "reason": "WaitingForPromotion", "message": "m"}
            ],
        },
    }
    assert run("status", "fr1") == 0
    out = capsys.readouterr().out
    assert "Phase:       Paused" in out and "1/2  weight 10%" in out and "WaitingForPromotion" in out
    assert api.patches == []


def test_a_missing_router_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubernetes.client.exceptions import ApiException

    class Missing(FakeRouters):
        def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
            raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(ctl, "_connect", lambda context: (Missing(), "ns"))
    assert run("promote", "nope") == 1
    assert "FederatedRouter ns/nope not found" in capsys.readouterr().err


def test_tokens_are_readable_utc_times() -> None:
    assert ctl.new_token(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "20260102T030405.000006Z"
