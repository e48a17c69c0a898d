"""Verdicts of the shipped Argo CD Lua checks and of the real kstatus library on one object.

Used by the unit tests here (recorded statuses) and by tests/e2e/test_rollout.py (live
objects read from the API server at each rollout phase).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from lupa import lua51

REPO = Path(__file__).resolve().parents[3]
ARGOCD = REPO / "charts" / "federated-dp-llm" / "argocd"


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


@cache
def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("fdp_argocd_generate", ARGOCD / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lua_script(kind: str) -> str:
    """The check Argo CD gets for `kind`: the shared prelude plus health/<kind>.lua."""
    return str(_generator().script(kind))


def lua_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) from the shipped check for obj's kind, run in Lua 5.1 like Argo
    CD's gopher-lua."""
    script = lua_script(obj["kind"])
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    hs = runtime.execute(script)
    return str(hs["status"]), str(hs["message"])


@cache
def kstatus_binary() -> Path | None:
    """hack/kstatus built once (None without a Go toolchain)."""
    if shutil.which("go") is None:
        return None
    proc = subprocess.run(
        [str(REPO / "hack" / "kstatus" / "build.sh")], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hack/kstatus/build.sh failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def kstatus(obj: dict[str, Any], binary: Path | None = None) -> dict[str, str]:
    """{"status": ..., "message": ...} from sigs.k8s.io/cli-utils kstatus."""
    binary = binary or kstatus_binary()
    if binary is None:
        raise RuntimeError("no Go toolchain: cannot build hack/kstatus")
    proc = subprocess.run([str(binary)], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return dict(json.loads(proc.stdout))
