"""Pure operator modules do no I/O: importing them pulls in no Kubernetes client, kopf or aiohttp."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "fdp_operator.models",
    "fdp_operator.crds",
    "fdp_operator.conditions",
    "fdp_operator.tls",
    "fdp_operator.guarantee",
    "fdp_operator.render.router",
    "fdp_operator.render.config",
    "fdp_operator.render.workloads",
]
FORBIDDEN = ["kopf", "kubernetes", "aiohttp", "fdp_operator.kube", "fdp_operator.apply", "psycopg"]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_module(module: str) -> None:
    code = (
        f"import sys, {module}\nbad = [m for m in {FORBIDDEN!r} if m in sys.modules]\nprint(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"{module} imports {out}"
