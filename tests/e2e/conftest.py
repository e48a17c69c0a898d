"""Fixtures for operator e2e tests: CRDs installed, the operator as a local process, demo nodes.

The simulated (kwok) nodes run no containers, so the operator runs here as a process
(``fdp-operator run``) against the test cluster's kubeconfig, and the HospitalNodes it
probes are ``fdp-router demo-node`` processes on 127.0.0.1 serving HTTPS (optionally mTLS)
with certificates from a throw-away CA. Reusable by the rollout tests:

- ``fdp_crds``: the CRDs from crds/ applied and Established (session).
- ``operator_runner``: an operator watching the test namespace; ``.restart()``, ``.stop()``,
  ``.logs()``; ``make_operator(namespace, kubeconfig=..., extra_args=...)`` for variants.
- ``demo_nodes``: ``demo_nodes.start(name, mtls=False) -> DemoNode`` (``.endpoint``, ``.stop()``,
  ``.ca_pem`` ...); ``demo_nodes.tls_secrets(namespace, node)`` creates the Secrets a
  HospitalNode's ``spec.tls`` references (opted in: ``fdp.io/allow-router-mount: "true"``).
- ``kube``: helpers (``apply``, ``get``, ``wait_condition``, ``eventually``).
- ``volume_provisioner`` (session, with ``fdp_crds``): the local control plane has no storage
  provisioner, so a SQLite router's ledger claim would stay Pending and its pod unscheduled;
  this binds each Pending claim to a hostPath PersistentVolume made for it, as a cluster's
  provisioner would. Skipped when the cluster has a default StorageClass (kind, real ones).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fdp_operator import tls

from tests.support.kube import eventually

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESYNC = "2"
#: the label a Secret needs before the operator mounts it (fdp_operator.security)
OPT_IN = {"fdp.io/allow-router-mount": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KubeHelper:
    cluster: Any

    def apply(self, namespace: str, docs: str | list[dict[str, Any]] | dict[str, Any]) -> None:
        text = (
            docs if isinstance(docs, str) else yaml.safe_dump_all(docs if isinstance(docs, list) else [docs])
        )
        self.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def items(self, namespace: str, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.cluster.kubectl(*args).stdout)["items"])

    def condition(self, namespace: str, kind: str, name: str, ctype: str) -> dict[str, Any] | None:
        obj = self.get(namespace, kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)

    def wait_condition(
        self,
        namespace: str,
        kind: str,
        name: str,
        ctype: str = "Ready",
        status: str = "True",
        timeout: float = 60,
    ) -> dict[str, Any]:
        return eventually(
            lambda: (
                (c := self.condition(namespace, kind, name, ctype)) is not None
                and c["status"] == status
                and c
            ),
            timeout=timeout,
            what=f"{kind}/{name} {ctype}={status}",
        )


@pytest.fixture(scope="session")
def kube(cluster) -> KubeHelper:
    return KubeHelper(cluster)


class VolumeProvisioner:
    """Binds Pending PersistentVolumeClaims to hostPath PersistentVolumes made for them."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        self.api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="e2e-volume-provisioner", daemon=True)

    def needed(self) -> bool:
        from kubernetes import client

        classes = client.StorageV1Api(self.api.api_client).list_storage_class().items
        return not any(
            (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
            for c in classes
        )

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                for pvc in self.api.list_persistent_volume_claim_for_all_namespaces().items:
                    if pvc.status.phase == "Pending" and not pvc.spec.volume_name:
                        self._provision(pvc)
            except Exception:  # the cluster going away at the end of the session, a race: next tick
                continue

    def _provision(self, pvc: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        ns, name = pvc.metadata.namespace, pvc.metadata.name
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"e2e-{ns}-{name}"[:253], "labels": {"fdp.io/e2e": "true"}},
            "spec": {
                "capacity": {"storage": pvc.spec.resources.requests["storage"]},
                "accessModes": pvc.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": pvc.spec.storage_class_name or "",
                "hostPath": {"path": f"/tmp/fdp-e2e-volumes/{ns}/{name}"},
                "claimRef": {"namespace": ns, "name": name, "uid": pvc.metadata.uid},
            },
        }
        try:
            self.api.create_persistent_volume(body)
        except ApiException as exc:
            if exc.status != 409:
                raise


@pytest.fixture(scope="session")
def volume_provisioner(cluster) -> Iterator[VolumeProvisioner | None]:
    provisioner = VolumeProvisioner(cluster.kubeconfig)
    if not provisioner.needed():
        yield None
        return
    provisioner.thread.start()
    yield provisioner
    provisioner.stop.set()
    provisioner.thread.join(timeout=5)


@pytest.fixture(scope="session")
def fdp_crds(cluster, volume_provisioner) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for name in ("hospitalnodes", "privacypolicies", "federatedrouters"):
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{name}.fdp.io", "--timeout=60s", timeout=90
        )
    # Discovery of just-established CRDs can lag a moment.
    eventually(
        lambda: cluster.kubectl("get", "fr", "-A", check=False).returncode == 0,
        timeout=30,
        what="fr discovery",
    )


@dataclass
class OperatorProcess:
    cluster: Any
    namespace: str
    log_path: Path
    kubeconfig: str | None = None
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    liveness_port: int = field(default_factory=free_port)

    def start(self) -> OperatorProcess:
        env = dict(self.cluster.env)
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "fdp-operator"),
                "run",
                "-n",
                self.namespace,
                "--resync-seconds",
                RESYNC,
                "--probe-tick-seconds",
                "0.5",
                "--liveness-host",
                "127.0.0.1",
                "--liveness-port",
                str(self.liveness_port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> OperatorProcess:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def make_operator(cluster, fdp_crds, tmp_path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def make(
        namespace: str, *, kubeconfig: str | None = None, extra_args: tuple[str, ...] = (), start: bool = True
    ) -> OperatorProcess:
        op = OperatorProcess(
            cluster, namespace, tmp_path / f"operator-{len(started)}.log", kubeconfig, extra_args
        )
        started.append(op)
        return op.start() if start else op

    yield make
    for op in started:
        op.stop()


@pytest.fixture
def operator_runner(make_operator, namespace) -> OperatorProcess:
    return make_operator(namespace)


# ---------------------------------------------------------------- demo hospital nodes


@dataclass
class DemoNode:
    name: str
    port: int
    ca_pem: str
    client_cert_pem: str = ""
    client_key_pem: str = ""
    mtls: bool = False
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> DemoNode:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self._listening, timeout=60, what=f"demo node {self.name} listening")
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # a loaded machine: do not fail a test on teardown
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class DemoNodes:
    workdir: Path
    kube: KubeHelper
    nodes: list[DemoNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        self.ca = tls.issue_ca("fdp e2e hospital CA", now)
        self.server = tls.issue_serving(self.ca, ["localhost"], now, timedelta(days=1))
        self.client = tls.issue_serving(self.ca, ["fdp-router-client"], now, timedelta(days=1))
        for name, text in (
            ("ca.crt", self.ca.cert_pem),
            ("tls.crt", self.server.cert_pem),
            ("tls.key", self.server.key_pem),
        ):
            (self.workdir / name).write_text(text)

    def start(self, name: str, *, mtls: bool = False, port: int | None = None) -> DemoNode:
        port = port or free_port()
        args = [
            str(BIN / "fdp-router"),
            "demo-node",
            "--port",
            str(port),
            "--name",
            name,
            "--host",
            "127.0.0.1",
            "--cert",
            str(self.workdir / "tls.crt"),
            "--key",
            str(self.workdir / "tls.key"),
        ]
        if mtls:
            args += ["--client-ca", str(self.workdir / "ca.crt")]
        node = DemoNode(name, port, self.ca.cert_pem, self.client.cert_pem, self.client.key_pem, mtls, args)
        self.nodes.append(node)
        return node.start()

    def tls_secrets(self, namespace: str, prefix: str = "hospital") -> dict[str, Any]:
        """Create the CA and client-cert Secrets; returns the matching HospitalNode ``spec.tls``."""
        self.kube.apply(
            namespace,
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": f"{prefix}-ca", "labels": OPT_IN},
                    "stringData": {"ca.crt": self.ca.cert_pem},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": f"{prefix}-client", "labels": OPT_IN},
                    "type": "kubernetes.io/tls",
                    "stringData": {"tls.crt": self.client.cert_pem, "tls.key": self.client.key_pem},
                },
            ],
        )
        return {"caSecretRef": {"name": f"{prefix}-ca"}, "clientCertSecretRef": {"name": f"{prefix}-client"}}

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def demo_nodes(tmp_path, kube) -> Iterator[DemoNodes]:
    nodes = DemoNodes(tmp_path, kube)
    yield nodes
    nodes.stop_all()


# ---------------------------------------------------------------- object builders


def hospital_node(
    name: str,
    endpoint: str,
    *,
    labels: dict[str, str] | None = None,
    tls_spec: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "HospitalNode",
        "metadata": {"name": name, "labels": labels or {"fdp.io/network": "e2e"}},
        "spec": {
            "hospital": f"{name}-hospital",
            "endpoint": endpoint,
            "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
            "privacy": {"dataClass": "PHI", "mechanism": "PureDP"},  # what a demo node runs
            **spec,
        },
    }
    if tls_spec:
        body["spec"]["tls"] = tls_spec
    return body


def privacy_policy(name: str = "pol", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "PrivacyPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def federated_router(name: str = "fr", policy: str = "pol", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "FederatedRouter",
        "metadata": {"name": name},
        "spec": {
            "policyRef": {"name": policy},
            "nodeSelector": {"matchLabels": {"fdp.io/network": "e2e"}},
            **spec,
        },
    }
