"""The repository layout must not break the standard library or the import layers."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_operator_from_repo_root_gives_the_standard_library() -> None:
    # A top-level `operator/` directory with an __init__.py would shadow the stdlib module
    # for every process started at the repo root; ours keeps packages one level down.
    code = "import operator, sys; print(operator.__file__); print(hasattr(operator, 'itemgetter'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(out[0]).resolve().parent == stdlib
    assert out[1] == "True"
    assert not (REPO / "operator" / "__init__.py").exists()


def test_the_fixed_top_level_layout_exists() -> None:
    for name in (
        "operator",
        "crds",
        "router",
        "charts",
        "examples",
        "tests/unit",
        "tests/e2e",
        "Dockerfile.operator",
        "Dockerfile.router",
        "README.md",
    ):
        assert (REPO / name).exists(), f"missing {name} (fixed by the design card)"


@pytest.mark.integration
def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("fdp-router", "fdp-operator"):
        proc = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "usage" in proc.stdout.lower()
