"""kstatus (Flux, Helm 4 --wait, Config Sync) reads every recorded phase right.

Asked of the real sigs.k8s.io/cli-utils library through hack/kstatus (a tiny Go program
built once and cached): in progress while rolling or paused, Current when done, Failed when
stalled. A resource with no status at all reads as Current: that kstatus rule is why the
operator writes Ready=False + Reconciling=True on its very first reconcile.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from . import recorded
from .health import kstatus as run_kstatus
from .health import kstatus_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def kstatus_bin() -> Path:
    binary = kstatus_binary()
    if binary is None:
        pytest.skip("Go toolchain not installed: cannot build hack/kstatus")
    return binary


def kstatus(binary: Path, obj: dict[str, Any]) -> dict[str, str]:
    return run_kstatus(obj, binary)


CASES = [
    pytest.param(o, k, id=f"{o['kind']} {name} is {k}")
    for table in (recorded.FEDERATED_ROUTER, recorded.HOSPITAL_NODE, recorded.PRIVACY_POLICY)
    for name, o, _, k in table
]


@pytest.mark.parametrize(("obj", "expected"), CASES)
def test_kstatus_gives_the_expected_verdict(kstatus_bin: Path, obj: dict[str, Any], expected: str) -> None:
    verdict = kstatus(kstatus_bin, obj)
    assert verdict["status"] == expected, verdict


def test_a_stalled_rollout_reports_the_reason_to_flux(kstatus_bin: Path) -> None:
    _, o, _, _ = next(c for c in recorded.FEDERATED_ROUTER if c[0].startswith("rolled back"))
    assert "made no progress" in kstatus(kstatus_bin, o)["message"]


def test_the_tool_rejects_input_that_is_not_an_object(kstatus_bin: Path) -> None:
    proc = subprocess.run([str(kstatus_bin)], input="[1]", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not a JSON object" in proc.stderr
