"""The README's real-cluster path, typed as written, on the local cluster's real node.

The commands are read from README.md's "On a cluster" block (from ``helm install`` to
``kubectl get fdp``) and run by bash, so the README cannot drift from what works; the
fixture has already done the block's first lines (images built, a real-node cluster up,
the images loaded). Then the quickstart's "Ask it something" steps: a token minted inside
the router pod, ``kubectl port-forward`` to the router's Service, one verified HTTPS
request whose answer came from a DP mechanism that charged what it reports.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import httpx
import pytest

from .conftest import REPO, ROUTER_IMAGE, RealCluster, eventually, verifying_context

pytestmark = pytest.mark.timeout(900)

NS = "fdp-system"
QUESTION = "Most common first-line treatment for hypertension among our patients?"


def readme_block() -> list[str]:
    """The README's real-cluster commands, one per line, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- real-cluster-path -->\s*```(?:bash|sh)\n(.*?)```", text, re.S)
    assert block, "README.md has no block marked <!-- real-cluster-path -->"
    lines = [ln.split("  #")[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_readme_block_is_the_path_this_test_runs() -> None:
    lines = readme_block()
    starts = [ln.split()[0] for ln in lines]
    assert starts[:2] == ["make", "make"], lines  # make images, make cluster-up REAL_NODES=1
    assert any(ln.startswith("helm install fdp charts/federated-dp-llm") for ln in lines)
    assert any(ln.startswith("kubectl wait") and "fr/quickstart-router" in ln for ln in lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_path_brings_the_quickstart_router_ready_and_it_answers(realnode: RealCluster) -> None:
    c = realnode
    lines = readme_block()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("helm install"))
    script = "set -euo pipefail\n" + "\n".join(lines[first:])
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=c.env, capture_output=True, text=True, timeout=600
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"the README's path failed after {took:.0f}s:\n{script}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        f"\n{c.diagnostics(NS)}"
    )
    # `kubectl get fdp` printed every node Ready and the router with its nodes.
    assert "quickstart-router" in proc.stdout and "cardiology" in proc.stdout, proc.stdout
    # The router is Ready once a node answers; every node is probed within its interval (5 s).
    for node in ("cardiology", "neurology", "emergency", "guidelines"):
        eventually(
            lambda node=node: (c.condition("hn", node, "Ready", NS) or {}).get("status") == "True",
            timeout=60,
            what=f"HospitalNode {node} Ready",
        )
    router_pods = [
        p for p in c.items("pods", None, NS) if p["metadata"]["name"].startswith("quickstart-router")
    ]
    assert router_pods and all(p["spec"]["nodeName"].endswith("-real") for p in router_pods), [
        (p["metadata"]["name"], p["spec"].get("nodeName")) for p in router_pods
    ]

    # "Ask it something", as examples/quickstart/README.md says.
    token = c.kubectl(
        "exec", "-n", NS, "deploy/quickstart-router", "-c", "router", "--",
        "fdp-router", "token", "--config", "/etc/fdp/config/router-config.json",
        "--user", "alice", "--department", "cardiology", "--role", "clinician",
    ).stdout.strip()  # fmt: skip
    assert token.count(".") == 2, token
    ca_pem = c.secret_value("quickstart-router-tls", "ca.crt", NS)
    port = _free_port()
    forward = subprocess.Popen(
        [str(c.bin_dir / "kubectl"), "port-forward", "-n", NS, "svc/quickstart-router", f"{port}:443"],
        env=c.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ctx = verifying_context(ca_pem)  # trusts only the operator's CA, checks the name

        def ask() -> dict | None:
            # Connects to the forwarded port but verifies the certificate as the Service's
            # name, quickstart-router (what the README's curl does with --resolve).
            with httpx.Client(verify=ctx, timeout=10) as client:
                try:
                    resp = client.post(
                        f"https://127.0.0.1:{port}/v1/chat/completions",
                        json={
                            "model": "patient-stats",
                            "privacy_budget": 0.5,
                            "messages": [{"role": "user", "content": QUESTION}],
                        },
                        headers={"Authorization": f"Bearer {token}"},
                        extensions={"sni_hostname": "quickstart-router"},
                    )
                except httpx.TransportError:  # kubectl port-forward not listening yet
                    return None
            doc = {"status": resp.status_code, **resp.json()}
            # The router's own probes may still see the demo hospitals down (their pods start
            # beside the router's): 503 no_node_available until the next probe passes, which
            # OpenAI SDKs retry. Anything else is the answer to check.
            if resp.status_code == 503 and (doc.get("error") or {}).get("code") == "no_node_available":
                raise AssertionError(doc)
            return doc

        answer = eventually(ask, timeout=90, interval=1, what="an answer through kubectl port-forward")
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    assert answer["status"] == 200, answer
    assert answer["choices"][0]["message"]["content"], answer
    privacy = answer["privacy"]
    assert privacy["epsilon"] == 0.5 and privacy["basis"], privacy
    assert privacy["nodes"] and set(privacy["nodes"]) <= {"cardiology", "neurology", "emergency"}, privacy

    print(f"README path: kubectl wait returned Ready {took:.0f}s after helm install started")


PROBE = """
import json, os, socket
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({
    "kubelet": tcp("10.244.0.1", 10250),
    "metrics_server": tcp("10.244.0.1", 4443),
    "apiserver_forwarder_direct": tcp("10.244.0.1", int(os.environ["FWD_PORT"])),
    "apiserver_via_service": tcp(os.environ["KUBERNETES_SERVICE_HOST"], 443),
    "dns": socket.gethostbyname("kubernetes.default.svc.cluster.local"),
}))
"""


def test_a_pod_reaches_dns_and_the_apiserver_service_but_not_the_kubelet(realnode: RealCluster) -> None:
    """The kubelet accepts anonymous requests (AlwaysAllow): a pod that reached it could exec
    into every other pod and read the router's keys. The node lets pods reach only DNS and
    the apiserver through the kubernetes Service (hack/cluster/realnode.sh, FDP-RN-IN)."""
    c = realnode
    ns = "attack"
    c.kubectl("create", "namespace", ns, check=False)
    # The apiserver's own endpoint (the forwarder on the node's address), which pods must
    # reach only through the Service.
    fwd_port = c.kubectl(
        "get", "endpoints", "kubernetes", "-n", "default", "-o", "jsonpath={.subsets[0].ports[0].port}"
    ).stdout.strip()
    c.kubectl(
        "run", "probe", "-n", ns, "--image", ROUTER_IMAGE, "--restart=Never", f"--env=FWD_PORT={fwd_port}",
        "--image-pull-policy=IfNotPresent", "--command", "--", "python", "-c", PROBE,
    )  # fmt: skip
    phase = eventually(
        lambda: (
            (c.get("pod", "probe", ns) or {}).get("status", {}).get("phase") in ("Succeeded", "Failed")
            and c.get("pod", "probe", ns)["status"]["phase"]
        ),
        timeout=120,
        what="the probe pod finished",
    )
    out = c.kubectl("logs", "-n", ns, "probe").stdout.strip()
    assert phase == "Succeeded", out
    seen = json.loads(out.splitlines()[-1])
    assert seen["apiserver_via_service"] == "open", seen
    assert seen["dns"] == "10.96.0.1", seen
    for door in ("kubelet", "metrics_server", "apiserver_forwarder_direct"):
        assert seen[door] != "open", seen
