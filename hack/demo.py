"""`make demo`: the whole product on the local control plane, end to end.

1. brings up the local cluster (Go-built control plane, kwok nodes) and installs the chart;
2. starts three demo hospital nodes (HTTPS, certificates from a throw-away CA) and the
   operator as local processes (kwok pods run no containers);
3. applies a three-hospital network, a privacy policy and a FederatedRouter, waits for Ready;
4. runs the router locally on exactly the config the operator rendered into its ConfigMap
   (only file paths and the listen address are rewritten for this machine), and sends
   clinician queries through it (single node, consensus, budget);
5. performs a blue/green update and a canary update, printing the CR status as it moves;
6. ends with a summary and the commands to poke at it.

Set FDP_DEMO_KEEP=1 to keep the router, nodes and operator running until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NS = "fdp-demo"
FR = "demo-router"
CLUSTER = os.environ.get("FDP_DEMO_CLUSTER", "fdp-demo")
# Three hospitals answering from their patients (PHI, a pure-DP mechanism on a synthetic table)
# and one Public node (a general medical table, no patient data).
NODES = ("cardiology", "neurology", "emergency", "guidelines")
PUBLIC_NODES = ("guidelines",)
HOSPITALS = {
    "cardiology": "st-mary-heart-center",
    "neurology": "university-neuro-institute",
    "emergency": "county-general",
    "guidelines": "open-medical-reference",
}
DEPARTMENTS = {
    "cardiology": ["cardiology", "emergency"],
    "neurology": ["neurology", "emergency"],
    "emergency": [],
    "guidelines": [],
}
PHI_MODEL, PUBLIC_MODEL = "patient-stats", "medical-guidelines"
PHI_QUESTION = "What is the most common first-line treatment for hypertension among our patients?"
DIABETES_QUESTION = "Most common first-line treatment for type 2 diabetes among our patients?"

_procs: list[subprocess.Popen[bytes]] = []
_cleanups: list[Callable[[], None]] = []
_t0 = time.monotonic()


def say(msg: str) -> None:
    print(f"\n\033[1m[demo +{time.monotonic() - _t0:5.1f}s] {msg}\033[0m", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, input: str | None = None, check: bool = True, quiet: bool = False) -> str:
    proc = subprocess.run(args, input=input, capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip())
    return proc.stdout


def kubectl(*args: str, **kw: Any) -> str:
    return run(str(K8S_BIN / "kubectl"), *args, **kw)


def start(name: str, args: list[str], logdir: Path) -> subprocess.Popen[bytes]:
    log = open(logdir / f"{name}.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    _procs.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(_procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in _procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    for cleanup in _cleanups:
        cleanup()


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"timed out after {timeout:.0f}s waiting for {what}")


def http(
    method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback URL we built
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError:
        return 0, None


def fr_status(name: str = FR) -> dict[str, Any]:
    out = kubectl("get", "fr", name, "-n", NS, "-o", "json", quiet=True)
    obj = json.loads(out)
    return {"generation": obj["metadata"].get("generation"), **(obj.get("status") or {})}


def condition(status: dict[str, Any], ctype: str) -> str:
    for c in status.get("conditions", []):
        if c.get("type") == ctype:
            return str(c.get("status"))
    return "?"


def status_line(st: dict[str, Any]) -> str:
    ro = st.get("rollout") or {}
    parts = [
        f"Ready={condition(st, 'Ready')}",
        f"Reconciling={condition(st, 'Reconciling')}",
        f"Stalled={condition(st, 'Stalled')}",
        f"strategy={ro.get('strategy')}",
    ]
    for key in ("activeColor", "previewColor", "canaryWeight", "currentStepIndex", "pauseReason"):
        if ro.get(key) not in (None, ""):
            parts.append(f"{key}={ro[key]}")
    parts.append(f"stable={str(ro.get('stableRevision'))[:8]} current={str(ro.get('currentRevision'))[:8]}")
    return " ".join(parts)


def set_image(name: str, image: str) -> None:
    """The pod-template change that starts a rollout."""
    patch = json.dumps({"spec": {"image": image}})
    kubectl("patch", "fr", name, "-n", NS, "--type=merge", "-p", patch, quiet=True)


def deployment_replicas(name: str) -> dict[str, int]:
    out = kubectl(
        "get", "deploy", "-n", NS, "-l", f"app.kubernetes.io/instance={name}", "-o", "json", quiet=True
    )
    return {d["metadata"]["name"]: int(d["spec"].get("replicas") or 0) for d in json.loads(out)["items"]}


def watch_rollout(
    label: str,
    timeout: float,
    name: str = FR,
    on_paused: Callable[[dict[str, Any]], None] | None = None,
    also_done: Callable[[], bool] = lambda: True,
) -> float:
    """Print each distinct status (and the Deployments' sizes) until the rollout settles."""
    t0 = time.monotonic()
    last = ""
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        st = fr_status(name)
        line = status_line(st) + f"  deployments={deployment_replicas(name)}"
        if line != last:
            print(f"  [{label} +{time.monotonic() - t0:5.1f}s] {line}", flush=True)
            last = line
        ro = st.get("rollout") or {}
        settled = (
            st.get("observedGeneration") == st.get("generation")
            and condition(st, "Ready") == "True"
            and condition(st, "Reconciling") == "False"
            and ro.get("currentRevision")
            and ro.get("currentRevision") == ro.get("stableRevision")
        )
        if settled and time.monotonic() - t0 > 2 and also_done():
            return time.monotonic() - t0
        if on_paused and ro.get("pauseReason"):
            on_paused(st)
        time.sleep(0.5)
    sys.exit(f"{label}: rollout did not settle within {timeout:.0f}s (last: {last})")


def router_cr(
    name: str, rollout: dict[str, Any], image: str = "ghcr.io/federated-dp-llm/router:0.1.0"
) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "FederatedRouter",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "replicas": 4,
            "policyRef": {"name": "demo-dp"},
            "nodeSelector": {"matchLabels": {"fdp.io/network": "demo"}},
            "routing": {"strategy": "least_request"},
            "auth": {
                "issuer": "fdp-demo",
                "audience": "federated-dp-llm",
                "algorithms": ["HS256"],
                "hs256SecretRef": {"name": "demo-jwt", "key": "secret"},
            },
            "ledger": {
                "backend": "postgres",
                "dsnSecretRef": {"name": "demo-ledger", "key": "dsn"},
                "auditKeySecretRef": {"name": "demo-ledger", "key": "audit-key"},
            },
            "rollout": rollout,
        },
    }


def main() -> int:
    global ENV, K8S_BIN
    work = Path(tempfile.mkdtemp(prefix="fdp-demo-"))
    logdir = work / "logs"
    logdir.mkdir()

    say(f"1/6 local control plane '{CLUSTER}' (builds the binaries on first use)")
    # A fresh cluster every time (4 s warm): no leftovers from an interrupted earlier run.
    subprocess.run([str(REPO / "hack/cluster/down.sh"), CLUSTER], capture_output=True)
    up = subprocess.run([str(REPO / "hack/cluster/up.sh"), CLUSTER], capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit(up.stderr)
    kubeconfig = up.stdout.strip().splitlines()[-1]
    K8S_BIN = Path(
        subprocess.run([str(REPO / "hack/cluster/build.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    ENV = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{K8S_BIN}:{VENV_BIN}:{os.environ['PATH']}"}
    kubectl("get", "nodes")

    say("installing the Helm chart (CRDs, operator Deployment, RBAC)")
    run(
        str(K8S_BIN / "helm"),
        "upgrade",
        "--install",
        "fdp",
        str(REPO / "charts/federated-dp-llm"),
        "--namespace",
        "fdp-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    )
    kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=federated-dp-llm", check=False)
    kubectl("create", "namespace", NS, quiet=True)

    say("2/6 three demo hospital nodes (HTTPS) and the operator, as local processes")
    sys.path.insert(0, str(REPO / "operator"))
    from fdp_operator import tls  # the operator's own CA helpers

    now = datetime.now(UTC)
    ca = tls.issue_ca("fdp-demo-hospitals", now)
    (work / "nodes-ca.crt").write_text(ca.cert_pem)
    ports: dict[str, int] = {}
    for seed, name in enumerate(NODES):
        pair = tls.issue_serving(ca, ["localhost"], now, timedelta(days=1))
        (work / f"{name}.crt").write_text(pair.cert_pem)
        (work / f"{name}.key").write_text(pair.key_pem)
        ports[name] = free_port()
        start(
            f"node-{name}",
            [
                str(VENV_BIN / "fdp-router"),
                "demo-node",
                "--port",
                str(ports[name]),
                "--name",
                name,
                "--host",
                "127.0.0.1",
                "--cert",
                str(work / f"{name}.crt"),
                "--key",
                str(work / f"{name}.key"),
                "--data-class",
                "public" if name in PUBLIC_NODES else "phi",
                "--hospital",
                HOSPITALS[name],
                "--seed",
                str(seed),
            ],
            logdir,
        )
        kind = "Public" if name in PUBLIC_NODES else "PHI, pure-DP mechanism"
        print(f"  demo node {name:<11} https://localhost:{ports[name]}  (hospital {HOSPITALS[name]}; {kind})")
    start(
        "operator",
        [
            str(VENV_BIN / "fdp-operator"),
            "run",
            "-n",
            NS,
            "--resync-seconds",
            "2",
            "--probe-tick-seconds",
            "1",
            "--log-format",
            "text",
            "--liveness-host",
            "127.0.0.1",
            "--liveness-port",
            str(free_port()),
        ],
        logdir,
    )

    say("3/6 applying the network: Secrets, 4 HospitalNodes, a PrivacyPolicy, a FederatedRouter")
    jwt_secret = os.urandom(32).hex()
    audit_key = os.urandom(32).hex()  # AES-256-GCM key for the encrypted audit trail
    sys.path.insert(0, str(REPO))
    from tests.support.postgres import start_postgres  # a throw-away PostgreSQL on loopback

    pg = start_postgres()
    _cleanups.append(pg.stop)
    dsn = pg.new_database()
    print("  ledger: PostgreSQL on loopback (several router replicas share one ledger)")
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-ledger", "labels": {"fdp.io/allow-router-mount": "true"}},
            "stringData": {"dsn": dsn, "audit-key": audit_key},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-nodes-ca", "labels": {"fdp.io/allow-router-mount": "true"}},
            "stringData": {"ca.crt": ca.cert_pem},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-jwt", "labels": {"fdp.io/allow-router-mount": "true"}},
            "stringData": {"secret": jwt_secret},
        },
    ]
    for name in NODES:
        docs.append(
            {
                "apiVersion": "fdp.io/v1alpha1",
                "kind": "HospitalNode",
                "metadata": {"name": name, "labels": {"fdp.io/network": "demo"}},
                "spec": {
                    "hospital": HOSPITALS[name],
                    "endpoint": f"https://localhost:{ports[name]}",
                    "model": PUBLIC_MODEL if name in PUBLIC_NODES else PHI_MODEL,
                    "privacy": {"dataClass": "Public", "mechanism": "None"}
                    if name in PUBLIC_NODES
                    else {"dataClass": "PHI", "mechanism": "PureDP"},
                    "departments": DEPARTMENTS[name],
                    "specializations": [name],
                    "tls": {"caSecretRef": {"name": "demo-nodes-ca"}},
                    "healthCheck": {
                        "path": "/health",
                        "intervalSeconds": 2,
                        "timeoutSeconds": 2,
                        "failureThreshold": 2,
                    },
                },
            }
        )
    docs.append(
        {
            "apiVersion": "fdp.io/v1alpha1",
            "kind": "PrivacyPolicy",
            "metadata": {"name": "demo-dp"},
            "spec": {
                "delta": 1e-5,
                "defaultEpsilonPerQuery": 0.1,
                "minEpsilonPerQuery": 0.01,
                "maxEpsilonPerQuery": 1.0,
                "budgets": {"perUser": 5, "perDepartment": 50, "perHospital": 500},
                "window": {"kind": "period", "period": "24h"},
                "consensus": {
                    "nodes": 3,
                    "minAnswers": 2,
                    "sigma": 4.0,
                    "candidateSets": {
                        "diabetes-first-line": [
                            "metformin",
                            "SGLT2 inhibitor",
                            "GLP-1 receptor agonist",
                            "sulfonylurea",
                            "DPP-4 inhibitor",
                        ]
                    },
                },
            },
        }
    )
    docs.append(
        router_cr(
            FR,
            {
                "strategy": "BlueGreen",
                "autoPromotionEnabled": True,
                "scaleDownDelaySeconds": 3,
                "progressDeadlineSeconds": 120,
            },
        )
    )
    kubectl("apply", "-n", NS, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    t_ready = time.monotonic()
    kubectl("wait", "-n", NS, f"fr/{FR}", "--for=condition=Ready", "--timeout=120s")
    ready_seconds = time.monotonic() - t_ready
    print(f"  FederatedRouter Ready {ready_seconds:.1f}s after kubectl apply")
    eventually(
        lambda: fr_status().get("nodes", {}).get("ready") == len(NODES),
        60,
        f"{len(NODES)} ready nodes in the router config",
    )
    kubectl("get", "hn,pp,fr", "-n", NS, "-o", "wide")
    kubectl("get", "deploy,svc,hpa,pdb,secret,cm", "-n", NS)

    say("4/6 the router, on the config the operator rendered (ConfigMap), with clinician queries")
    cm_name = fr_status()["configMapName"]
    cm = json.loads(kubectl("get", "cm", cm_name, "-n", NS, "-o", "json", quiet=True))
    (config_key,) = [k for k in cm["data"] if k.endswith((".json", ".yaml"))][:1]
    rendered = json.loads(cm["data"][config_key])
    (work / "jwt-secret").write_text(jwt_secret)
    router_port = free_port()
    local = json.loads(json.dumps(rendered))
    local["server"] = {"host": "127.0.0.1", "port": router_port}  # plain HTTP on loopback for the demo
    local["routing"]["default_model"] = PHI_MODEL  # a request naming no model asks the PHI nodes
    local["auth"]["hs256_secret_file"] = str(work / "jwt-secret")
    (work / "ledger-dsn").write_text(dsn)
    local["ledger"]["postgres_dsn_file"] = str(work / "ledger-dsn")
    (work / "audit-key").write_text(audit_key)
    local["ledger"]["audit_key_file"] = str(work / "audit-key")
    for node in local["nodes"]:
        node["tls"]["ca_file"] = str(work / "nodes-ca.crt")
    (work / "router-config.json").write_text(json.dumps(local, indent=2))
    print(
        f"  rendered ConfigMap {cm_name} -> {work / 'router-config.json'} "
        f"({len(local['nodes'])} nodes, policy {local['privacy']['policy_name']})"
    )
    start(
        "router",
        [str(VENV_BIN / "fdp-router"), "serve", "--config", str(work / "router-config.json")],
        logdir,
    )
    base = f"http://127.0.0.1:{router_port}"
    eventually(lambda: http("GET", f"{base}/readyz")[0] == 200, 30, "router /readyz")

    def token(user: str, dept: str, role: str = "clinician") -> str:
        return run(
            str(VENV_BIN / "fdp-router"),
            "token",
            "--user",
            user,
            "--department",
            dept,
            "--role",
            role,
            "--secret-file",
            str(work / "jwt-secret"),
            "--issuer",
            "fdp-demo",
            "--audience",
            "federated-dp-llm",
            quiet=True,
        ).strip()

    alice = token("dr-alice", "cardiology")
    bob = token("dr-bob", "emergency")

    def show(label: str, code: int, body: Any) -> None:
        if code != 200:
            print(f"  {label} -> {code} {json.dumps(body)}")
            return
        print(
            f"  {label} -> {code}: node={body.get('node_id')} privacy_cost={body.get('privacy_cost'):.4f} "
            f"remaining={body.get('remaining_budget'):.4f} consensus_reached={body.get('consensus_reached')} "
            f"confidence={body.get('confidence_score')}\n      answer: {str(body.get('response'))[:100]}"
        )

    q = {"prompt": PHI_QUESTION, "max_tokens": 64, "privacy_budget": 0.1}
    show(
        "dr-alice (cardiology) POST /v1/inference, PHI node at epsilon 0.1",
        *http("POST", f"{base}/v1/inference", alice, q),
    )
    show(
        "dr-alice same question again (cache hit, costs nothing)",
        *http("POST", f"{base}/v1/inference", alice, q),
    )
    print("  the answer's accuracy depends on epsilon (each PHI node runs report-noisy-max on its patients):")
    for eps in (0.02, 1.0):
        answers = []
        for i in range(3):
            code, body = http(
                "POST",
                f"{base}/v1/inference",
                alice,
                {"prompt": f"{PHI_QUESTION} (run {eps}-{i})", "privacy_budget": eps},
            )
            answer = str(body.get("response")).partition(": ")[2].partition(" (differentially")[0]
            answers.append(f"{body.get('node_id')}: {answer}" if code == 200 else str(code))
        print(f"    epsilon {eps:<4} -> " + " | ".join(answers))
    show(
        "dr-bob (emergency) GNMax consensus (sigma 4) over public options, one vote per hospital",
        *http(
            "POST",
            f"{base}/v1/inference",
            bob,
            {"prompt": DIABETES_QUESTION, "require_consensus": True, "candidate_set": "diabetes-first-line"},
        ),
    )
    print(
        "      (only one of the public options can come out; with three voters, hospital-level DP at\n"
        "       this cost is noisy: docs/benchmarks/privacy.md plots accuracy against epsilon)"
    )
    code, body = http(
        "POST",
        f"{base}/v1/chat/completions",
        alice,
        {
            "model": PUBLIC_MODEL,
            "messages": [{"role": "user", "content": "Asthma control plan for an adult?"}],
        },
    )
    print(
        f"  dr-alice POST /v1/chat/completions, model {PUBLIC_MODEL} (the Public node) -> {code}: "
        f"privacy={json.dumps(body.get('privacy'))}"
    )
    code, body = http(
        "POST",
        f"{base}/v1/inference",
        alice,
        {"prompt": "What did patient Jane Roe get?", "model": PHI_MODEL},
    )
    print(f"  a question no DP mechanism answers -> {code}: {body.get('error', {}).get('message')}")
    for i in range(1, 50):
        code, body = http(
            "POST",
            f"{base}/v1/inference",
            alice,
            {"prompt": f"{PHI_QUESTION} (follow-up {i})", "privacy_budget": 1.0},
        )
        if code != 200:
            print(f"  dr-alice follow-up {i} at epsilon 1.0 -> {code} {json.dumps(body)}")
            break
        print(f"  dr-alice follow-up {i} at epsilon 1.0 -> 200, remaining {body.get('remaining_budget'):.4f}")
    code, body = http("GET", f"{base}/v1/privacy/budget/dr-alice", alice)
    print(f"  GET /v1/privacy/budget/dr-alice {code}: {json.dumps(body)[:300]}")

    say("5/6 blue/green update: new image -> preview color, auto-promotion, old color scaled down")
    set_image(FR, "ghcr.io/federated-dp-llm/router:0.1.1")
    bg_seconds = watch_rollout(
        "blue/green", 180, also_done=lambda: sorted(deployment_replicas(FR).values()) == [0, 4]
    )
    kubectl("get", "deploy,svc", "-n", NS, "-o", "wide", check=False)

    say("   canary: a second router, then an update walking 25% -> pause 3s -> 50% -> pause -> 100%")
    canary_fr = "demo-canary"
    steps = [
        {"setWeight": 25},
        {"pause": {"duration": "3s"}},
        {"setWeight": 50},
        {"pause": {}},
        {"setWeight": 100},
    ]
    kubectl(
        "apply",
        "-n",
        NS,
        "-f",
        "-",
        input=json.dumps(
            router_cr(canary_fr, {"strategy": "Canary", "progressDeadlineSeconds": 120, "steps": steps})
        ),
    )
    kubectl("wait", "-n", NS, f"fr/{canary_fr}", "--for=condition=Ready", "--timeout=120s")
    watch_rollout("canary initial", 120, name=canary_fr)
    promoted = {"done": False}

    def promote(st: dict[str, Any]) -> None:
        reason = str((st.get("rollout") or {}).get("pauseReason", ""))
        if not promoted["done"] and "promot" in reason.lower():
            print(f"  paused ({reason}): running `fdp-operator promote {canary_fr}`")
            run(str(VENV_BIN / "fdp-operator"), "promote", canary_fr, "-n", NS, check=False)
            promoted["done"] = True

    set_image(canary_fr, "ghcr.io/federated-dp-llm/router:0.2.0")
    canary_seconds = watch_rollout(
        "canary", 240, name=canary_fr, on_paused=promote, also_done=lambda: promoted["done"]
    )
    kubectl("get", "deploy", "-n", NS, "-l", f"app.kubernetes.io/instance={canary_fr}", check=False)

    say("6/6 summary")
    kubectl("get", "fr,hn,pp", "-n", NS)
    print(f"""
  FederatedRouter apply -> Ready {ready_seconds:.1f}s; blue/green rollout {bg_seconds:.1f}s
  (incl. the 3 s scale-down delay); canary rollout {canary_seconds:.1f}s (incl. its 3 s timed pause
  and the manual promotion).

  Poke at it:
    export KUBECONFIG={kubeconfig} PATH={K8S_BIN}:$PATH
    kubectl get fr,hn,pp -n {NS} -o wide
    kubectl describe fr {FR} -n {NS}
    {VENV_BIN}/fdp-operator status {FR} -n {NS}
    logs of the local processes: {logdir}
  With FDP_DEMO_KEEP=1 the router stays up: curl -H "Authorization: Bearer $TOKEN" {base}/v1/health
  Stop the cluster: make cluster-down   (or hack/cluster/down.sh {CLUSTER})
""")
    if os.environ.get("FDP_DEMO_KEEP") == "1":
        print(f"  router at {base}; token for dr-alice: {alice}\n  Ctrl-C to stop.")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


ENV: dict[str, str] = dict(os.environ)
K8S_BIN = Path()

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    finally:
        stop_all()
