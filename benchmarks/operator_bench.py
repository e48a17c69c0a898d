"""Operator benchmark: apply -> Ready for one router, and a 200-node / 20-router batch.

Runs against $KUBECONFIG (the local control plane from hack/cluster/up.sh, or any cluster
with the CRDs installable). Starts the operator as a local process (``fdp-operator run``),
a few ``fdp-router demo-node`` HTTPS processes the HospitalNodes point at, and measures:

1. single: wall time from ``kubectl apply`` of a FederatedRouter (policy and nodes already
   Ready) to ``Ready=True``, median of ``--repeat`` runs;
2. batch: wall time from applying 200 HospitalNodes + 1 policy + 20 FederatedRouters (each
   selecting 10 nodes) to all of them Ready, and the operator's peak RSS (VmHWM).

Usage: KUBECONFIG=... python benchmarks/operator_bench.py [--repeat 5] [--nodes 200] [--routers 20]
Prints a JSON summary; ``--markdown FILE`` also writes the table for docs/benchmarks/operator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from fdp_operator import tls

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ready_names(namespace: str, kind: str) -> set[str]:
    out = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
    return {
        o["metadata"]["name"]
        for o in out
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (o.get("status") or {}).get("conditions", [])
        )
    }


def node(name: str, endpoint: str, group: int) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "HospitalNode",
        "metadata": {"name": name, "labels": {"bench/group": str(group)}},
        "spec": {
            "hospital": f"hospital-{name}",
            "endpoint": endpoint,
            "privacy": {"dataClass": "PHI", "mechanism": "PureDP"},
            "tls": {"caSecretRef": {"name": "bench-ca"}},
            "healthCheck": {"intervalSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        },
    }


def router(name: str, group: int) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "FederatedRouter",
        "metadata": {"name": name},
        "spec": {
            "policyRef": {"name": "bench"},
            "nodeSelector": {"matchLabels": {"bench/group": str(group)}},
            # PostgreSQL: a SQLite ledger needs a PersistentVolumeClaim the local cluster cannot bind.
            "ledger": {"backend": "postgres", "dsnSecretRef": {"name": "bench-ledger", "key": "dsn"}},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--routers", type=int, default=20)
    parser.add_argument("--demo-nodes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if "KUBECONFIG" not in os.environ:
        print("set KUBECONFIG (e.g. KUBECONFIG=$(hack/cluster/up.sh | tail -1))", file=sys.stderr)
        return 2
    if shutil.which("kubectl") is None:
        print("kubectl must be on PATH (hack/cluster/build.sh prints its directory)", file=sys.stderr)
        return 2

    ns = f"bench-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="fdp-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in ("hospitalnodes", "privacypolicies", "federatedrouters"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.fdp.io", "--timeout=60s")
    kubectl("create", "namespace", ns)
    try:
        now = datetime.now(UTC)
        ca = tls.issue_ca("bench CA", now)
        srv = tls.issue_serving(ca, ["localhost"], now, timedelta(days=1))
        (work / "tls.crt").write_text(srv.cert_pem)
        (work / "tls.key").write_text(srv.key_pem)
        endpoints = []
        for i in range(args.demo_nodes):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "fdp-router"),
                        "demo-node",
                        "--port",
                        str(port),
                        "--name",
                        f"d{i}",
                        "--host",
                        "127.0.0.1",
                        "--cert",
                        str(work / "tls.crt"),
                        "--key",
                        str(work / "tls.key"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            endpoints.append(f"https://localhost:{port}")
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bench-ca", "labels": {"fdp.io/allow-router-mount": "true"}},
            "stringData": {"ca.crt": ca.cert_pem},
        }
        ledger_secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bench-ledger", "labels": {"fdp.io/allow-router-mount": "true"}},
            # Rendered, never connected to: the routers' pods are simulated by kwok.
            "stringData": {"dsn": "postgresql://bench@127.0.0.1:5432/bench"},
        }
        policy = {
            "apiVersion": "fdp.io/v1alpha1",
            "kind": "PrivacyPolicy",
            "metadata": {"name": "bench"},
            "spec": {},
        }
        kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([secret, ledger_secret, policy]))
        log = (work / "operator.log").open("wb")
        op = subprocess.Popen(
            [str(BIN / "fdp-operator"), "run", "-n", ns, "--liveness-port", str(free_port())],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(op)
        time.sleep(3)

        # 1. one router, apply -> Ready
        kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(node("single", endpoints[0], 9999)))
        kubectl("wait", "-n", ns, "hn/single", "--for=condition=Ready", "--timeout=60s")
        single = []
        for i in range(args.repeat):
            name = f"single-{i}"
            t0 = time.perf_counter()
            kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(router(name, 9999)))
            kubectl("wait", "-n", ns, f"fr/{name}", "--for=condition=Ready", "--timeout=60s")
            single.append(time.perf_counter() - t0)
            kubectl("delete", "fr", name, "-n", ns, "--wait=false")

        # 2. the batch
        groups = max(1, args.routers)
        docs = [node(f"hn-{i:03d}", endpoints[i % len(endpoints)], i % groups) for i in range(args.nodes)]
        docs += [router(f"fr-{g:02d}", g) for g in range(args.routers)]
        t0 = time.perf_counter()
        kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))
        apply_done = time.perf_counter() - t0
        want_nodes = {d["metadata"]["name"] for d in docs if d["kind"] == "HospitalNode"}
        want_routers = {d["metadata"]["name"] for d in docs if d["kind"] == "FederatedRouter"}
        nodes_done = routers_done = None
        while time.perf_counter() - t0 < args.timeout:
            if nodes_done is None and want_nodes <= ready_names(ns, "hn"):
                nodes_done = time.perf_counter() - t0
            if routers_done is None and want_routers <= ready_names(ns, "fr"):
                routers_done = time.perf_counter() - t0
            if nodes_done is not None and routers_done is not None:
                break
            time.sleep(0.5)
        batch = max(nodes_done or float("inf"), routers_done or float("inf"))
        result = {
            "single_router_apply_to_ready_s": {
                "median": round(statistics.median(single), 2),
                "min": round(min(single), 2),
                "max": round(max(single), 2),
                "runs": [round(s, 2) for s in single],
            },
            "batch": {
                "hospital_nodes": args.nodes,
                "routers": args.routers,
                "all_nodes_ready_s": None if nodes_done is None else round(nodes_done, 1),
                "all_routers_ready_s": None if routers_done is None else round(routers_done, 1),
                "all_ready_s": round(batch, 1),
                "kubectl_apply_s": round(apply_done, 1),
            },
            "operator_peak_rss_mib": round(peak_rss_mib(op.pid), 1),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        print(json.dumps(result, indent=2))
        if args.markdown:
            s = result["single_router_apply_to_ready_s"]
            b = result["batch"]
            args.markdown.write_text(
                "| measurement | result | aim |\n|---|---|---|\n"
                f"| one FederatedRouter, apply -> Ready (median of {args.repeat}) | {s['median']} s "
                f"(min {s['min']}, max {s['max']}) | < 5 s |\n"
                f"| {b['hospital_nodes']} HospitalNodes + {b['routers']} FederatedRouters -> all Ready "
                f"| {b['all_ready_s']} s (nodes {b['all_nodes_ready_s']} s, "
                f"routers {b['all_routers_ready_s']} s)"
                " | < 60 s |\n"
                f"| operator peak RSS during the batch | {result['operator_peak_rss_mib']} MiB "
                "| < 200 MiB |\n"
            )
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
