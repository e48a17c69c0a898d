"""The realpods tier: the product in real pods on a real kubelet node (issue 12, item 3).

The fixture ``realnode`` does its own set-up and tear-down (module scope: the node is gone
before the rest of the suite runs):

1. skips, saying why, where a real node cannot run (not root, no cgroup filesystem, no
   containerd/kubelet support in hack/cluster, ``FDP_SKIP_REALPODS=1``);
2. builds the router and operator images (``hack/images/build.sh``, cached in Docker's layer
   cache) while the cluster comes up, and, once, a PostgreSQL image for the ledger of the
   multi-replica routers (``Dockerfile.postgres`` here: not a product image);
3. ``FDP_REAL_NODES=1 FDP_CLUSTER_NODES=0 hack/cluster/up.sh NAME``: the local control plane plus
   one real node (containerd + kubelet, kube-proxy, CoreDNS, metrics-server) and no simulated
   node, so every pod really runs;
4. ``hack/cluster/load-images.sh NAME IMAGE...``;
5. at the end ``hack/cluster/down.sh NAME`` (``FDP_KEEP_CLUSTER=1`` keeps it).

``network`` (module) installs the chart as a pod, the demo hospital nodes as pods behind
Services with their own certificates, the ledger database, the HospitalNodes, a PrivacyPolicy
and three FederatedRouters. ``results`` collects each scenario's numbers; they are written to
``$FDP_REALPODS_RESULTS`` (default: a file under pytest's tmp dir) and printed as a table.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fdp_operator import tls

from tests.support.kube import Cluster, eventually

REPO = Path(__file__).resolve().parents[3]
HACK = REPO / "hack" / "cluster"
IMAGES = REPO / "hack" / "images"
CHART = REPO / "charts" / "federated-dp-llm"
ROUTER_IMAGE = "ghcr.io/federated-dp-llm/router:0.1.0"
OPERATOR_IMAGE = "ghcr.io/federated-dp-llm/operator:0.1.0"
#: fully qualified (containerd keeps the name), tagged with a hash of its Dockerfile (rebuilt when it changes)
PG_DOCKERFILE = Path(__file__).with_name("Dockerfile.postgres")
PG_IMAGE = f"fdp.local/realpods-postgres:15-{hashlib.sha256(PG_DOCKERFILE.read_bytes()).hexdigest()[:12]}"
OPT_IN = {"fdp.io/allow-router-mount": "true"}
REAL_NODE_LABEL = "fdp.io/real-node"
OPERATOR_DEPLOY = "fdp-realpods-federated-dp-llm"
OP_NS = "fdp-realpods"  # the README test uses fdp-system
NS = "clinic-realpods"
DEMO_NODES = ("hospital-a", "hospital-b")
DATABASES = ("bg", "canary", "hpa")
BIN = Path(sys.executable).parent


def _log(msg: str) -> None:
    print(f"[realpods {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cluster


@dataclass
class RealCluster(Cluster):
    """The real-node cluster: kubectl (tests/support/kube.py) plus helm and the lookups the
    scenarios use."""

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "helm"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def apply(self, docs: list[dict[str, Any]] | dict[str, Any], namespace: str = NS) -> None:
        text = yaml.safe_dump_all(docs if isinstance(docs, list) else [docs])
        self.kubectl("apply", "-n", namespace, "-f", "-", input=text)

    def get(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def items(self, kind: str, selector: str | None = None, namespace: str = NS) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def condition(self, kind: str, name: str, ctype: str, namespace: str = NS) -> dict[str, Any] | None:
        obj = self.get(kind, name, namespace) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)

    def secret_value(self, name: str, key: str, namespace: str = NS) -> str:
        obj = self.get("secret", name, namespace)
        assert obj is not None, f"Secret {namespace}/{name} missing"
        return base64.b64decode(obj["data"][key]).decode()

    def diagnostics(self, namespace: str = NS) -> str:
        """What a failing wait prints: pods, events, the operator's log tail."""
        out = []
        for args in (
            ("get", "pods,deploy,svc,hpa,fr,hn", "-n", namespace, "-o", "wide"),
            ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
            ("describe", "pods", "-n", namespace),
            ("logs", "-n", OP_NS, f"deploy/{OPERATOR_DEPLOY}", "--tail=80"),
        ):
            proc = self.kubectl(*args, check=False, timeout=30)
            text = proc.stdout + proc.stderr
            out.append(f"$ kubectl {' '.join(args)}\n{text[-6000:]}")
        return "\n".join(out)

    def wait(self, check: Callable[[], Any], timeout: float, what: str, namespace: str = NS) -> Any:
        try:
            return eventually(check, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n---- diagnostics ----\n{self.diagnostics(namespace)}") from None


def _cannot_run_real_node() -> str | None:
    if os.environ.get("FDP_SKIP_REALPODS") == "1":
        return "FDP_SKIP_REALPODS=1"
    if sys.platform != "linux":
        return f"a real kubelet node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return (
            "a real node (containerd, kubelet, bridge, iptables) needs root; run as root to include this tier"
        )
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        return "no cgroup filesystem at /sys/fs/cgroup: containers cannot run here"
    if not (HACK / "load-images.sh").exists() or "FDP_REAL_NODES" not in (HACK / "up.sh").read_text():
        return "hack/cluster has no real-node support (FDP_REAL_NODES) in this checkout"
    for tool in ("iptables", "ip"):
        if shutil.which(tool) is None and os.environ.get("FDP_REALPODS_IGNORE_TOOLS") != "1":
            return f"{tool} not found: the real node's bridge and kube-proxy need it"
    return None


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float, what: str) -> str:
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    _log(f"{what}: {time.monotonic() - t0:.0f}s")
    return proc.stdout


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IMAGES / "docker.sh"), *args], capture_output=True, text=True, timeout=timeout)


def _ensure_postgres_image() -> None:
    if _docker("image", "inspect", PG_IMAGE).returncode == 0:
        return
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    _run(
        [
            str(IMAGES / "docker.sh"),
            "build",
            "--network",
            "host",
            "--tag",
            PG_IMAGE,
            "--build-arg",
            f"BASE={ROUTER_IMAGE}",
            "--file",
            str(PG_DOCKERFILE),
            str(Path(__file__).parent),
        ],
        env=env,
        timeout=900,
        what=f"docker build {PG_IMAGE}",
    )


def _active_real_node() -> str | None:
    cache = Path(os.environ.get("FDP_CACHE_DIR") or Path.home() / ".cache" / "federated-dp-llm")
    active = cache / "realnode" / "ACTIVE"
    return active.read_text().strip() or None if active.exists() else None


def _prepare(cluster: RealCluster) -> None:
    _ensure_postgres_image()
    _run(
        [str(HACK / "load-images.sh"), cluster.name, ROUTER_IMAGE, OPERATOR_IMAGE, PG_IMAGE],
        env=cluster.env,
        timeout=900,
        what="hack/cluster/load-images.sh",
    )
    # Every pod of this tier must really run: no simulated node may take one (the operator's
    # router pods have no node selector to pin them with).
    for node in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]:
        if node["metadata"].get("labels", {}).get(REAL_NODE_LABEL) != "true":
            cluster.kubectl("cordon", node["metadata"]["name"])
    cluster.wait(
        lambda: cluster.kubectl("top", "nodes", check=False).returncode == 0,
        timeout=120,
        what="metrics-server answering (kubectl top nodes)",
        namespace="kube-system",
    )


@pytest.fixture(scope="module")  # torn down after each module, before the rest of the suite
def realnode(k8s_bin_dir: Path) -> Iterator[RealCluster]:
    reason = _cannot_run_real_node()
    if reason:
        pytest.skip(f"realpods tier skipped: {reason}")
    t0 = time.monotonic()
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)  # this tier brings its own cluster, whatever $KUBECONFIG says
    env["PATH"] = f"{k8s_bin_dir}{os.pathsep}{env.get('PATH', '')}"
    reuse = os.environ.get("FDP_REALPODS_CLUSTER")
    if not reuse:
        active = _active_real_node()
        if active:
            raise RuntimeError(
                f"the real-node cluster '{active}' is up on this machine and only one can exist: "
                f"run hack/cluster/down.sh {active}, or reuse it with FDP_REALPODS_CLUSTER={active}"
            )
    name = reuse or f"fdp-rp-{os.getpid()}"
    build = None
    if os.environ.get("FDP_REALPODS_SKIP_BUILD") != "1":
        build = subprocess.Popen(
            [str(IMAGES / "build.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    up_env = dict(env, FDP_REAL_NODES="1", FDP_CLUSTER_NODES="0")
    try:
        try:
            up = [str(HACK / "up.sh"), name]
            try:
                out = _run(up, env=up_env, timeout=900, what=f"hack/cluster/up.sh {name}")
            except RuntimeError as first:
                # Seen once in a fresh-clone CI run (node not Ready in 90 s, cause not found; the
                # next module's fresh start worked): show the kubelet's last words, start once more.
                kubelet_log = Path(os.environ.get("FDP_CACHE_DIR") or Path.home() / ".cache/federated-dp-llm")
                kubelet_log = kubelet_log / "realnode" / name / "logs" / "kubelet.log"
                tail = kubelet_log.read_text(errors="replace")[-3000:] if kubelet_log.exists() else ""
                _log(f"up.sh failed, retrying once after down.sh:\n{str(first)[-1500:]}\nkubelet:\n{tail}")
                subprocess.run([str(HACK / "down.sh"), name], capture_output=True, timeout=300, env=env)
                out = _run(up, env=up_env, timeout=900, what=f"hack/cluster/up.sh {name} (retry)")
        finally:
            if build is not None:
                log_text, _ = build.communicate(timeout=1800)
                if build.returncode != 0:
                    raise RuntimeError(f"hack/images/build.sh failed:\n{log_text[-5000:]}")
                _log("hack/images/build.sh done")
        env["KUBECONFIG"] = out.strip().splitlines()[-1]
        cluster = RealCluster(kubeconfig=env["KUBECONFIG"], bin_dir=k8s_bin_dir, env=env, name=name)
        _prepare(cluster)
        _log(f"real-node cluster {name} ready in {time.monotonic() - t0:.0f}s")
    except BaseException:
        if not reuse:
            subprocess.run([str(HACK / "down.sh"), name], capture_output=True, timeout=300, env=env)
        raise
    try:
        yield cluster
    finally:
        if reuse:  # somebody else's cluster: leave it as it was
            for node in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]:
                if node["metadata"].get("labels", {}).get(REAL_NODE_LABEL) != "true":
                    cluster.kubectl("uncordon", node["metadata"]["name"], check=False)
        elif os.environ.get("FDP_KEEP_CLUSTER") != "1":
            subprocess.run([str(HACK / "down.sh"), name], capture_output=True, timeout=300, env=env)


# ---------------------------------------------------------------- results


@dataclass
class Results:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, scenario: str, **values: Any) -> None:
        row = {"scenario": scenario, **values}
        self.rows.append(row)
        _log(f"result {json.dumps(row, default=str)}")

    def table(self) -> str:
        lines = ["| scenario | duration (s) | requests | failed | notes |", "|---|---|---|---|---|"]
        for r in self.rows:
            notes = ", ".join(
                f"{k}={v}" for k, v in r.items() if k not in {"scenario", "duration_s", "requests", "failed"}
            )
            lines.append(
                f"| {r['scenario']} | {r.get('duration_s', '')} | {r.get('requests', '')} "
                f"| {r.get('failed', '')} | {notes} |"
            )
        return "\n".join(lines)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    res = Results()
    yield res
    if not res.rows:
        return
    path = Path(
        os.environ.get("FDP_REALPODS_RESULTS") or tmp_path_factory.mktemp("realpods") / "results.json"
    )
    path.write_text(json.dumps(res.rows, indent=2, default=str))
    _REPORTS.append(f"realpods results ({path}):\n{res.table()}")


_REPORTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The numbers at the end of the run's output (a fixture's own output is captured)."""
    for text in _REPORTS:
        terminalreporter.section("realpods results")
        for line in text.splitlines():
            terminalreporter.write_line(line)


# ---------------------------------------------------------------- the network in pods


@dataclass
class Network:
    cluster: RealCluster
    jwt_secret: bytes
    node_ca_pem: str
    timings: dict[str, float] = field(default_factory=dict)

    def token(
        self, user: str, department: str = "cardiology", roles: tuple[str, ...] = ("clinician",)
    ) -> str:
        from fdp_router.auth import mint_token

        return mint_token(
            self.jwt_secret,
            user=user,
            department=department,
            roles=list(roles),
            issuer=ISSUER,
            audience="federated-dp-llm",
            ttl_seconds=3600,
        )


ISSUER = "fdp-realpods"
POLICY_PER_USER = 1.0


def _pod_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def demo_node_objects(name: str, index: int) -> list[dict[str, Any]]:
    labels = {"app": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {REAL_NODE_LABEL: "true"},
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "containers": [
                            {
                                "name": "node",
                                "image": ROUTER_IMAGE,
                                "args": [
                                    "demo-node",
                                    "--port",
                                    "8443",
                                    "--host",
                                    "0.0.0.0",
                                    "--name",
                                    name,
                                    "--seed",
                                    str(index + 1),
                                    "--cert",
                                    "/tls/tls.crt",
                                    "--key",
                                    "/tls/tls.key",
                                    "--client-ca",  # mTLS: the router's client certificate
                                    "/tls/ca.crt",
                                ],
                                "ports": [{"name": "https", "containerPort": 8443}],
                                # mTLS: the kubelet has no client certificate for an HTTPS probe
                                "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 2},
                                "resources": {"requests": {"cpu": "20m", "memory": "96Mi"}},
                                "securityContext": _pod_security(),
                                "volumeMounts": [
                                    {"name": "tls", "mountPath": "/tls", "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": f"{name}-serving"}},
                            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"name": "https", "port": 8443, "targetPort": "https"}]},
        },
    ]


PG_SCRIPT = """set -eu
initdb -D "$PGDATA" -U fdp --auth=trust >/dev/null
echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
for db in {dbs}; do echo "CREATE DATABASE $db;" | postgres --single -D "$PGDATA" postgres >/dev/null; done
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp -c max_connections=200
"""


def ledger_db_objects() -> list[dict[str, Any]]:
    labels = {"app": "ledger-db"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ledger-db", "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {REAL_NODE_LABEL: "true"},
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": {
                            "runAsUser": 999,
                            "runAsGroup": 999,
                            "fsGroup": 999,
                            "runAsNonRoot": True,
                        },
                        "containers": [
                            {
                                "name": "postgres",
                                "image": PG_IMAGE,
                                "command": ["sh", "-c", PG_SCRIPT.format(dbs=" ".join(DATABASES))],
                                "env": [{"name": "PGDATA", "value": "/var/lib/pg/data"}],
                                "ports": [{"name": "pg", "containerPort": 5432}],
                                "readinessProbe": {
                                    "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "fdp"]},
                                    "periodSeconds": 2,
                                },
                                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/pg"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ledger-db"},
            "spec": {"selector": labels, "ports": [{"name": "pg", "port": 5432, "targetPort": "pg"}]},
        },
    ]


def router_spec(db: str, **spec: Any) -> dict[str, Any]:
    """A FederatedRouter on the router image, a PostgreSQL ledger, high rate limits (the load
    loop is one client), and small CPU requests (the node has two cores)."""
    return {
        "image": ROUTER_IMAGE,
        "policyRef": {"name": "realpods"},
        "nodeSelector": {"matchLabels": {"fdp.io/network": "realpods"}},
        "routing": {"strategy": "round_robin"},
        "auth": {"issuer": ISSUER, "hs256SecretRef": {"name": "clinician-jwt", "key": "secret"}},
        "rateLimits": {
            "perUser": {"ratePerSecond": 10000, "burst": 10000},
            "perDepartment": {"ratePerSecond": 10000, "burst": 10000},
        },
        "ledger": {"backend": "postgres", "dsnSecretRef": {"name": f"ledger-dsn-{db}", "key": "dsn"}},
        "resources": {"requests": {"cpu": "50m", "memory": "160Mi"}, "limits": {"memory": "512Mi"}},
        **spec,
    }


def federated_router(name: str, db: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "FederatedRouter",
        "metadata": {"name": name},
        "spec": router_spec(db, **spec),
    }


ROUTERS: dict[str, dict[str, Any]] = {
    "fr-bg": federated_router(
        "fr-bg",
        "bg",
        replicas=2,
        rollout={"strategy": "BlueGreen", "scaleDownDelaySeconds": 10, "autoPromotionEnabled": True},
    ),
    "fr-canary": federated_router(
        "fr-canary",
        "canary",
        replicas=4,
        rollout={
            "strategy": "Canary",
            "steps": [
                {"setWeight": 25},
                {"pause": {"duration": "25s"}},
                {"setWeight": 50},
                {"pause": {"duration": "25s"}},
            ],
        },
    ),
    "fr-hpa": federated_router(
        "fr-hpa",
        "hpa",
        resources={"requests": {"cpu": "100m", "memory": "160Mi"}, "limits": {"memory": "512Mi"}},
        autoscaling={
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 50,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 5}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 15,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
                },
            },
        },
    ),
}


def ready(cluster: RealCluster, kind: str, name: str, namespace: str = NS) -> bool:
    c = cluster.condition(kind, name, "Ready", namespace)
    return c is not None and c["status"] == "True"


@pytest.fixture(scope="module")
def network(realnode: RealCluster) -> Iterator[Network]:
    c = realnode
    yield _network(c)
    if os.environ.get("FDP_REALPODS_CLUSTER"):  # a cluster we keep: leave it as we found it
        subprocess.run(
            [str(c.bin_dir / "helm"), "uninstall", "fdp-realpods", "-n", OP_NS],
            env=c.env,
            capture_output=True,
            timeout=120,
        )
        c.kubectl("delete", "namespace", NS, OP_NS, "--wait=false", check=False)


def _network(c: RealCluster) -> Network:
    t0 = time.monotonic()
    if os.environ.get("FDP_REALPODS_CLUSTER"):  # a reused cluster: what an earlier run left
        subprocess.run([str(c.bin_dir / "helm"), "uninstall", "fdp-realpods", "-n", OP_NS], env=c.env,
                       capture_output=True, timeout=120)  # fmt: skip
        c.kubectl("delete", "namespace", NS, OP_NS, "--ignore-not-found", "--timeout=120s", timeout=150)
    c.kubectl("create", "namespace", NS)
    # The operator as a pod: the chart, its RBAC (a Role in the watched namespace), no more.
    c.helm(
        "install",
        "fdp-realpods",
        str(CHART),
        "--namespace",
        OP_NS,
        "--create-namespace",
        "--set",
        f"watchNamespaces={{{NS}}}",
        "--set",
        "operator.resyncSeconds=3",
        "--set-json",
        f'nodeSelector={{"{REAL_NODE_LABEL}":"true"}}',
    )
    now = datetime.now(UTC)
    ca = tls.issue_ca("fdp realpods hospital CA", now)
    client = tls.issue_serving(ca, ["fdp-router-client"], now, timedelta(days=1))
    jwt_secret = os.urandom(32).hex().encode()
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "clinician-jwt", "labels": OPT_IN},
            "stringData": {"secret": jwt_secret.decode()},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hospital-ca", "labels": OPT_IN},
            "stringData": {"ca.crt": ca.cert_pem},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hospital-client", "labels": OPT_IN},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": client.cert_pem, "tls.key": client.key_pem},
        },
    ]
    for i, node in enumerate(DEMO_NODES):
        dns = [node, f"{node}.{NS}", f"{node}.{NS}.svc", f"{node}.{NS}.svc.cluster.local"]
        serving = tls.issue_serving(ca, dns, now, timedelta(days=1))
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{node}-serving", "labels": OPT_IN},
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": serving.cert_pem,
                    "tls.key": serving.key_pem,
                    "ca.crt": ca.cert_pem,
                },
            }
        )
        objs += demo_node_objects(node, i)
    objs += ledger_db_objects()
    for db in DATABASES:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"ledger-dsn-{db}", "labels": OPT_IN},
                "stringData": {"dsn": f"postgresql://fdp@ledger-db.{NS}.svc:5432/{db}"},
            }
        )
    c.apply(objs)
    c.wait(
        lambda: all(
            (c.get("deploy", n) or {}).get("status", {}).get("readyReplicas") == 1
            for n in (*DEMO_NODES, "ledger-db")
        ),
        timeout=180,
        what="demo hospital nodes and the ledger database Ready",
    )
    c.wait(
        lambda: (c.get("deploy", OPERATOR_DEPLOY, OP_NS) or {}).get("status", {}).get("readyReplicas") == 1,
        timeout=180,
        what="the operator pod Ready",
        namespace=OP_NS,
    )
    timings = {"chart installed, operator pod, demo nodes and ledger pods Ready": time.monotonic() - t0}
    _log(f"chart, demo nodes and ledger database up in {time.monotonic() - t0:.0f}s")
    nodes = [
        {
            "apiVersion": "fdp.io/v1alpha1",
            "kind": "HospitalNode",
            "metadata": {"name": node, "labels": {"fdp.io/network": "realpods"}},
            "spec": {
                "hospital": node,
                "endpoint": f"https://{node}.{NS}.svc:8443",
                "model": "patient-stats",
                "healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
                "privacy": {"dataClass": "PHI", "mechanism": "PureDP"},
                "tls": {
                    "caSecretRef": {"name": "hospital-ca"},
                    "clientCertSecretRef": {"name": "hospital-client"},
                },
            },
        }
        for node in DEMO_NODES
    ]
    policy = {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "PrivacyPolicy",
        "metadata": {"name": "realpods"},
        "spec": {
            "defaultEpsilonPerQuery": 0.01,
            "minEpsilonPerQuery": 0.01,
            "maxEpsilonPerQuery": 0.5,
            "budgets": {"perUser": POLICY_PER_USER, "perDepartment": 100000.0, "perHospital": 100000.0},
        },
    }
    c.apply([*nodes, policy, *ROUTERS.values()])
    t1 = time.monotonic()
    for node in DEMO_NODES:
        c.wait(lambda node=node: ready(c, "hn", node), timeout=60, what=f"HospitalNode {node} Ready (probed)")
    for name in ROUTERS:
        c.wait(lambda name=name: ready(c, "fr", name), timeout=240, what=f"FederatedRouter {name} Ready")
    timings["3 FederatedRouters Ready (real probes) after kubectl apply"] = time.monotonic() - t1
    _log(f"network Ready in {time.monotonic() - t0:.0f}s")
    return Network(c, jwt_secret, ca.cert_pem, timings)


# ---------------------------------------------------------------- the request loop

PHI_QUESTION = "What is the most common first-line treatment for hypertension among our patients?"


def verifying_context(ca_pem: str) -> Any:
    """TLS that trusts only ``ca_pem`` and checks the server name (the router CA's, from its Secret)."""
    import ssl

    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class Sample:
    t: float  # monotonic start
    dt: float
    status: int  # 0: no HTTP answer (connect/TLS/timeout error)
    user: str
    cost: float = 0.0
    node: str = ""
    error: str = ""


@dataclass
class LoadLoop:
    """A bounded request loop from the host to a router's ClusterIP Service: ``concurrency``
    clients, a new TCP+TLS connection per request (so kube-proxy picks a pod per request, as
    many independent clinicians would), the server certificate verified against the router CA
    for the Service's DNS name. ``user_of(i)`` names the clinician of request ``i``."""

    address: str
    port: int
    server_name: str
    ca_pem: str
    token_of: Callable[[str], str]
    user_of: Callable[[int], str]
    epsilon: float = 0.01
    concurrency: int = 4
    max_seconds: float = 300
    tag: str = "load"
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"load-{self.tag}", daemon=True)
        self._tokens: dict[str, str] = {}
        self._error: BaseException | None = None
        self.started = 0.0

    def start(self) -> LoadLoop:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "load loop did not stop"
        if self._error is not None:  # the loop died: its samples prove nothing
            raise AssertionError(f"load loop failed: {self._error!r}") from self._error
        return self.samples

    def _token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.token_of(user)
        return self._tokens[user]

    def _main(self) -> None:
        import asyncio

        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._error = exc

    async def _run(self) -> None:
        import asyncio

        import aiohttp

        ctx = verifying_context(self.ca_pem)
        counter = iter(range(10**9))
        deadline = self.started + self.max_seconds
        url = f"https://{self.address}:{self.port}/v1/inference"
        timeout = aiohttp.ClientTimeout(total=15)

        async def worker(session: aiohttp.ClientSession) -> None:
            while not self._stop.is_set() and time.monotonic() < deadline:
                i = next(counter)
                user = self.user_of(i)
                body = {"prompt": f"{PHI_QUESTION} (run {self.tag}-{i})", "privacy_budget": self.epsilon}
                t0 = time.monotonic()
                s = Sample(t0, 0.0, 0, user)
                try:
                    async with session.post(
                        url,
                        json=body,
                        headers={"Authorization": f"Bearer {self._token(user)}"},
                        server_hostname=self.server_name,
                        ssl=ctx,
                        timeout=timeout,
                    ) as resp:
                        s.status = resp.status
                        data = await resp.json(content_type=None)
                        if resp.status == 200:
                            s.cost = float(data.get("privacy_cost") or 0.0)
                            s.node = str(data.get("node_id") or "")
                        else:
                            s.error = json.dumps(data)[:300]
                except Exception as exc:
                    s.error = f"{type(exc).__name__}: {exc}"[:300]
                s.dt = time.monotonic() - t0
                self.samples.append(s)
                if s.status == 0:
                    await asyncio.sleep(0.05)

        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(worker(session) for _ in range(self.concurrency)))


def summarize(
    samples: list[Sample], ok: tuple[int, ...] = (200,), expected: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Counts; ``failed`` is every request that was neither answered (``ok``) nor an expected
    refusal (e.g. 403 budget exceeded), with the first errors to show."""
    failed = [s for s in samples if s.status not in ok and s.status not in expected]
    span = (max(s.t + s.dt for s in samples) - min(s.t for s in samples)) if samples else 0.0
    return {
        "requests": len(samples),
        "ok": sum(s.status in ok for s in samples),
        "failed": len(failed),
        "rps": round(len(samples) / span, 1) if span else 0.0,
        "p50_ms": round(sorted(s.dt for s in samples)[len(samples) // 2] * 1000, 1) if samples else 0.0,
        "first_failures": [f"{s.status} {s.error}" for s in failed[:5]],
    }


def pod_request_counts(cluster: RealCluster, selector: str, ca_pem: str) -> dict[str, float]:
    """Answered /v1/inference requests per Ready pod, from each pod's own /metrics (pod IP):
    which pod answered, without a response header."""
    import re
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = False  # a pod IP is not in the certificate; the chain is still verified
    out: dict[str, float] = {}
    pattern = re.compile(r"^fdp_requests_total\{([^}]*)\}\s+([0-9.e+]+)$", re.M)
    for pod in cluster.items("pods", selector):
        ip = pod["status"].get("podIP")
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if not ip or conds.get("Ready") != "True" or pod["metadata"].get("deletionTimestamp"):
            continue
        with urllib.request.urlopen(f"https://{ip}:8443/metrics", context=ctx, timeout=5) as resp:
            text = resp.read().decode()
        out[pod["metadata"]["name"]] = sum(
            float(v)
            for labels, v in pattern.findall(text)
            if "inference" in labels and 'status="200"' in labels
        )
    return out
