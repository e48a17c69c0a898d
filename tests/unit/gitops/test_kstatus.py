"""kstatus (Flux, Helm 4 --wait, Config Sync) reads every recorded phase right.

Asked of the real sigs.k8s.io/cli-utils library through hack/kstatus (a tiny Go program
built once and cached): in progress while rolling or paused, Current when done, Failed when
stalled. A resource with no status at all reads as Current: that kstatus rule is why the
operator writes Ready=False + Reconciling=True on its very first reconcile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from . import recorded

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def kstatus_bin() -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go toolchain not installed: cannot build hack/kstatus")
    proc = subprocess.run(
        [str(REPO / "hack" / "kstatus" / "build.sh")], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f"hack/kstatus/build.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def kstatus(binary: Path, obj: dict[str, Any]) -> dict[str, str]:
    proc = subprocess.run([str(binary)], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


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
