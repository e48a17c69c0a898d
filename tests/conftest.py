"""Shared pytest fixtures: the Kubernetes cluster the e2e tests run against.

`cluster` yields a real API server: the one `$KUBECONFIG` points at (kind, a real cluster)
or, when unset, the local control plane that `hack/cluster/up.sh` builds from Go modules
and starts with kwokctl (simulated nodes; real etcd, apiserver, controller-manager and
scheduler). Tests under tests/e2e/ are marked `e2e` automatically.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import Cluster

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack" / "cluster"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop async tests run on (`fdp-router serve` serves on uvloop by default)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--event-loop") == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_dir = REPO / "tests" / "e2e"
    realpods_dir = e2e_dir / "realpods"
    for item in items:
        parents = Path(str(item.fspath)).parents
        if e2e_dir in parents:
            item.add_marker(pytest.mark.e2e)
        if realpods_dir in parents:
            item.add_marker(pytest.mark.realpods)


def _tool_dir_from_path() -> Path | None:
    """With FDP_USE_PATH_TOOLS=1 (e.g. on kind), use kubectl/helm from PATH instead of building."""
    if os.environ.get("FDP_USE_PATH_TOOLS") != "1":
        return None
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("FDP_USE_PATH_TOOLS=1 but kubectl is not on PATH")
    return Path(kubectl).parent


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    """Directory holding kubectl, helm, kwokctl, kube-apiserver...: built once, cached per version."""
    from_path = _tool_dir_from_path()
    if from_path is not None:
        return from_path
    proc = subprocess.run([str(HACK / "build.sh")], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/cluster/build.sh failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster(k8s_bin_dir: Path) -> Iterator[Cluster]:
    env = dict(os.environ)
    env["PATH"] = f"{k8s_bin_dir}{os.pathsep}{env.get('PATH', '')}"
    user_kubeconfig = os.environ.get("KUBECONFIG")
    if user_kubeconfig:
        env["KUBECONFIG"] = user_kubeconfig
        yield Cluster(kubeconfig=user_kubeconfig, bin_dir=k8s_bin_dir, env=env, name="external")
        return
    name = f"fdp-test-{os.getpid()}"
    proc = subprocess.run([str(HACK / "up.sh"), name], capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        subprocess.run([str(HACK / "down.sh"), name], capture_output=True, timeout=120)
        raise RuntimeError(f"hack/cluster/up.sh failed:\n{proc.stderr[-4000:]}")
    kubeconfig = proc.stdout.strip().splitlines()[-1]
    env["KUBECONFIG"] = kubeconfig
    try:
        yield Cluster(kubeconfig=kubeconfig, bin_dir=k8s_bin_dir, env=env, name=name)
    finally:
        if os.environ.get("FDP_KEEP_CLUSTER") != "1":
            subprocess.run([str(HACK / "down.sh"), name], capture_output=True, timeout=120)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
