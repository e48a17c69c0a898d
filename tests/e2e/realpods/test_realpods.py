"""The product in real pods on a real kubelet node, under a request loop the whole time.

a) clinicians' requests through the router's ClusterIP Service, the server certificate verified
   against the CA the operator issued (read from its Secret);
b) a blue/green update: 0 failed requests across the switch, the old color scaled down after
   the delay;
f) a certificate renewal rolls the pods without failed requests;
e) deleting a router pod under load loses no charge and overspends nothing (the ledger check);
c) a canary walks its steps: the canary pods' share of answers follows the replica ratio;
d) the HPA the operator renders scales the router out under load and back in; the operator
   never resets the replica count.

Each scenario's durations and failed-request counts go to ``results`` (written as JSON and
printed as a table at the end; docs/benchmarks/realpods.md keeps the numbers).
"""

from __future__ import annotations

import json
import math
import ssl
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    DEMO_NODES,
    NS,
    POLICY_PER_USER,
    LoadLoop,
    Network,
    RealCluster,
    Results,
    _log,
    pod_request_counts,
    ready,
    summarize,
    verifying_context,
)

pytestmark = [pytest.mark.realpods, pytest.mark.timeout(900)]


# ---------------------------------------------------------------- helpers


def router_ca(c: RealCluster, router: str) -> str:
    """The CA certificate of the router, from the Secret the operator created (``<fr>-ca``)."""
    return c.secret_value(f"{router}-ca", "tls.crt")


def service_ip(c: RealCluster, name: str) -> str:
    svc = c.get("svc", name)
    assert svc is not None, f"Service {name} missing"
    return str(svc["spec"]["clusterIP"])


def loop_for(net: Network, router: str, *, tag: str, users: Any = None, **kw: Any) -> LoadLoop:
    c = net.cluster
    return LoadLoop(
        address=service_ip(c, router),
        port=443,
        server_name=f"{router}.{NS}.svc",
        ca_pem=router_ca(c, router),
        token_of=net.token,
        user_of=users or (lambda i: f"{tag}-{i // 80}"),  # 80 x 0.01 of a 1.0 budget
        tag=tag,
        **kw,
    )


def rollout(c: RealCluster, router: str) -> dict[str, Any]:
    return dict(((c.get("fr", router) or {}).get("status") or {}).get("rollout") or {})


def reconciling(c: RealCluster, router: str) -> bool:
    cond = c.condition("fr", router, "Reconciling")
    return cond is not None and cond["status"] == "True"


def deploy(c: RealCluster, name: str) -> dict[str, Any]:
    return c.get("deploy", name) or {}


def spec_replicas(c: RealCluster, name: str) -> int | None:
    d = deploy(c, name)
    return d.get("spec", {}).get("replicas") if d else None


def ready_replicas(c: RealCluster, name: str) -> int:
    return int(deploy(c, name).get("status", {}).get("readyReplicas") or 0)


def bump_cpu(c: RealCluster, router: str, millicores: int) -> None:
    """A pod template change (a new revision) that leaves the router's behaviour alone."""
    fr = c.get("fr", router) or {}
    resources = json.loads(json.dumps(fr["spec"]["resources"]))
    resources["requests"]["cpu"] = f"{millicores}m"
    c.kubectl(
        "patch", "-n", NS, "fr", router, "--type=merge", "-p", json.dumps({"spec": {"resources": resources}})
    )


def served_serial(address: str, server_name: str, ca_pem: str) -> int:
    from cryptography import x509

    ctx = verifying_context(ca_pem)
    import socket

    with (
        socket.create_connection((address, 443), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def secret_serial(c: RealCluster, router: str) -> int:
    from cryptography import x509

    pem = c.secret_value(f"{router}-tls", "tls.crt")
    return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


def blue_green_done(c: RealCluster, router: str, old_color: str) -> bool:
    ro = rollout(c, router)
    return (
        ro.get("activeColor") not in (None, old_color)
        and spec_replicas(c, f"{router}-{old_color}") == 0
        and not reconciling(c, router)
    )


# ---------------------------------------------------------------- a) requests, TLS


def test_a_clinicians_reach_the_router_service_over_verified_tls(network: Network, results: Results) -> None:
    c = network.cluster
    for name in ("fr-bg", "fr-canary", "fr-hpa"):
        assert ready(c, "fr", name)
    ca = router_ca(c, "fr-bg")
    ip = service_ip(c, "fr-bg")
    # The CA is the operator's (its own Secret), the name the Service's; another CA is refused.
    from fdp_operator import tls

    other = tls.issue_ca("not the router CA", datetime.now(UTC))
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(ip, f"fr-bg.{NS}.svc", other.cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_serial(ip, "someone-else.example", ca)
    assert served_serial(ip, f"fr-bg.{NS}.svc", ca) == secret_serial(c, "fr-bg")

    loop = loop_for(network, "fr-bg", tag="a").start()
    time.sleep(6)
    samples = loop.stop()
    s = summarize(samples)
    assert s["failed"] == 0 and s["ok"] > 20, s
    answered = [x for x in samples if x.status == 200]
    assert {x.node for x in answered} <= set(DEMO_NODES) and all(x.cost > 0 for x in answered)
    results.add(
        "a) requests through the ClusterIP Service, TLS verified against fr-bg-ca",
        duration_s=6,
        **{k: s[k] for k in ("requests", "failed", "rps", "p50_ms")},
        nodes=sorted({x.node for x in answered}),
    )
    for what, seconds in network.timings.items():
        results.add(f"setup: {what}", duration_s=round(seconds, 1))


# ---------------------------------------------------------------- b) blue/green


def test_b_blue_green_switch_fails_no_request(network: Network, results: Results) -> None:
    c = network.cluster
    old = rollout(c, "fr-bg").get("activeColor")
    assert old in ("blue", "green"), rollout(c, "fr-bg")
    new = "green" if old == "blue" else "blue"
    loop = loop_for(network, "fr-bg", tag="b").start()
    time.sleep(3)
    t0 = time.monotonic()
    bump_cpu(c, "fr-bg", 60)
    c.wait(lambda: rollout(c, "fr-bg").get("activeColor") == new, timeout=240, what="fr-bg switched color")
    t_switch = time.monotonic()
    assert spec_replicas(c, f"fr-bg-{old}") == 2, "the old color keeps its pods for scaleDownDelaySeconds"
    c.wait(lambda: spec_replicas(c, f"fr-bg-{old}") == 0, timeout=60, what=f"fr-bg-{old} scaled to 0")
    t_down = time.monotonic()
    c.wait(lambda: blue_green_done(c, "fr-bg", old), timeout=60, what="fr-bg rollout finished")
    c.wait(
        lambda: not c.items("pods", f"fdp.io/color={old},fdp.io/router=fr-bg"), 60, "old color's pods gone"
    )
    time.sleep(2)
    s = summarize(loop.stop())
    svc = c.get("svc", "fr-bg") or {}
    assert svc["spec"]["selector"].get("fdp.io/color") == new, svc["spec"]["selector"]
    results.add(
        "b) blue/green update (2 replicas, scaleDownDelaySeconds 10)",
        duration_s=round(t_down - t0, 1),
        requests=s["requests"],
        failed=s["failed"],
        switch_s=round(t_switch - t0, 1),
        old_color_down_after_switch_s=round(t_down - t_switch, 1),
        rps=s["rps"],
    )
    assert s["failed"] == 0 and s["ok"] > 20, s  # a loop that died early sent nothing
    assert t_down - t_switch >= 9, "the old color went down before scaleDownDelaySeconds"


# ---------------------------------------------------------------- f) certificate renewal


def test_f_certificate_renewal_rolls_the_pods_without_failed_requests(
    network: Network, results: Results
) -> None:
    c = network.cluster
    ca = router_ca(c, "fr-bg")
    ip = service_ip(c, "fr-bg")
    serial = secret_serial(c, "fr-bg")
    old = rollout(c, "fr-bg")["activeColor"]
    not_after = datetime.fromisoformat((c.get("fr", "fr-bg") or {})["status"]["tls"]["notAfter"])
    loop = loop_for(network, "fr-bg", tag="f").start()
    time.sleep(3)
    t0 = time.monotonic()
    # Renewal is due at notAfter - renewBefore: make that now, as time would (the operator's
    # resync is the clock), then put the default back once it renewed.
    due = math.ceil((not_after - datetime.now(UTC)).total_seconds()) + 2
    c.kubectl(
        "patch",
        "-n",
        NS,
        "fr",
        "fr-bg",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"tls": {"renewBefore": f"{due}s"}}}),
    )
    c.wait(lambda: secret_serial(c, "fr-bg") != serial, timeout=60, what="fr-bg-tls renewed")
    t_renewed = time.monotonic()
    c.kubectl(
        "patch",
        "-n",
        NS,
        "fr",
        "fr-bg",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"tls": {"renewBefore": "360h"}}}),
    )
    c.wait(
        lambda: blue_green_done(c, "fr-bg", old), timeout=240, what="fr-bg rolled to the renewed certificate"
    )
    t_rolled = time.monotonic()
    new_serial = secret_serial(c, "fr-bg")
    assert served_serial(ip, f"fr-bg.{NS}.svc", ca) == new_serial
    time.sleep(2)
    s = summarize(loop.stop())
    results.add(
        "f) certificate renewal (operator CA, pods rolled blue/green)",
        duration_s=round(t_rolled - t0, 1),
        requests=s["requests"],
        failed=s["failed"],
        renewed_after_s=round(t_renewed - t0, 1),
        rps=s["rps"],
    )
    assert s["failed"] == 0 and s["ok"] > 20, s  # a loop that died early sent nothing


# ---------------------------------------------------------------- e) pod deleted under load


def test_e_deleting_a_router_pod_loses_no_charge_and_overspends_nothing(
    network: Network, results: Results, tmp_path: Path
) -> None:
    c = network.cluster
    color = rollout(c, "fr-bg")["activeColor"]
    eps, per_user = 0.05, 25  # 25 attempts per user at 0.05 against a 1.0 budget: some refused
    loop = loop_for(network, "fr-bg", tag="e", users=lambda i: f"e-{i // per_user}", epsilon=eps).start()
    time.sleep(4)
    pods = c.items("pods", f"fdp.io/color={color},fdp.io/router=fr-bg")
    victim = pods[0]["metadata"]["name"]
    t0 = time.monotonic()
    c.kubectl("delete", "-n", NS, "pod", victim, "--wait=false")
    c.wait(
        lambda: (
            ready_replicas(c, f"fr-bg-{color}") == 2
            and victim not in {p["metadata"]["name"] for p in c.items("pods", "fdp.io/router=fr-bg")}
        ),
        timeout=120,
        what="the deleted router pod replaced and Ready",
    )
    t_back = time.monotonic()
    time.sleep(3)
    samples = loop.stop()
    s = summarize(samples, expected=(403,))
    refused = [x for x in samples if x.status == 403]
    assert all("privacy_budget_exceeded" in x.error for x in refused), refused[:3]
    assert refused, "the loop should exhaust budgets (the overspend check needs refusals)"

    # The ledger check: every answered request's charge is in the ledger, no budget exceeded.
    auditor = network.token("auditor-e", roles=("auditor",))
    ctx = verifying_context(router_ca(c, "fr-bg"))
    import urllib.request

    by_user: dict[str, list[Any]] = {}
    for x in samples:
        by_user.setdefault(x.user, []).append(x)
    problems = []
    for user, xs in sorted(by_user.items()):
        req = urllib.request.Request(
            f"https://{service_ip(c, 'fr-bg')}/v1/privacy/budget/{user}",
            headers={"Authorization": f"Bearer {auditor}", "Host": f"fr-bg.{NS}.svc"},
        )
        ctx.check_hostname = False  # urllib sends SNI = the IP; the chain is still the router CA's
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            b = json.loads(resp.read())
        answered = [x for x in xs if x.status == 200]
        queries, reported = b["details"]["queries"], b["details"]["reported_epsilon_sum"]
        if queries < len(answered) or reported + 1e-9 < sum(x.cost for x in answered):
            problems.append(
                f"{user}: {len(answered)} answered, ledger has {queries} ({reported} eps): charge lost"
            )
        if b["consumed_budget"] > b["total_budget"] + 1e-9 or b["total_budget"] != POLICY_PER_USER:
            problems.append(f"{user}: overspent {b['consumed_budget']} > {b['total_budget']}")
        if queries > len(xs):
            problems.append(f"{user}: ledger has {queries} charges for {len(xs)} requests")
    key_file = tmp_path / "audit.key"
    key_file.write_text(c.secret_value("fr-bg-audit-key", "key"))
    dsn = f"postgresql://fdp@{service_ip(c, 'ledger-db')}:5432/bg"
    verify = subprocess.run(
        [
            str(Path(__import__("sys").executable).parent / "fdp-router"),
            "ledger",
            "verify",
            "--dsn",
            dsn,
            "--key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    results.add(
        "e) router pod deleted under load (2 replicas, PostgreSQL ledger)",
        duration_s=round(t_back - t0, 1),
        requests=s["requests"],
        failed=s["failed"],
        answered=s["ok"],
        refused_budget=len(refused),
        users=len(by_user),
        ledger_problems=len(problems),
        ledger_verify=verify.returncode,
    )
    _log(f"e) first failures: {s['first_failures']}")
    assert not problems, problems
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr


# ---------------------------------------------------------------- c) canary


def test_c_canary_share_follows_the_replica_ratio(network: Network, results: Results) -> None:
    c = network.cluster
    ca = router_ca(c, "fr-canary")
    tolerance = 0.15
    loop = loop_for(network, "fr-canary", tag="c").start()
    time.sleep(3)
    t0 = time.monotonic()
    bump_cpu(c, "fr-canary", 60)
    shares = {}
    for weight in (25, 50):

        def at_weight(weight: int = weight) -> tuple[int, int] | None:
            ro = rollout(c, "fr-canary")
            if ro.get("canaryWeight") != weight or not ro.get("pauseReason"):
                return None
            canary = ready_replicas(c, "fr-canary-canary")
            stable = ready_replicas(c, "fr-canary-stable")
            if canary != spec_replicas(c, "fr-canary-canary") or stable != spec_replicas(
                c, "fr-canary-stable"
            ):
                return None
            return (canary, stable) if canary and stable else None

        canary, stable = c.wait(at_weight, timeout=180, what=f"canary at weight {weight}, paused, pods Ready")
        canary_pods = {
            p["metadata"]["name"] for p in c.items("pods", "fdp.io/router=fr-canary,fdp.io/track=canary")
        }
        before = pod_request_counts(c, "fdp.io/router=fr-canary", ca)
        time.sleep(10)
        after = pod_request_counts(c, "fdp.io/router=fr-canary", ca)
        assert set(before) == set(after), "pods changed during the measurement"
        delta = {p: after[p] - before[p] for p in after}
        total = sum(delta.values())
        share = sum(v for p, v in delta.items() if p in canary_pods) / total
        expected = canary / (canary + stable)
        shares[weight] = (round(share, 3), round(expected, 3), int(total))
        _log(
            f"c) weight {weight}: canary share {share:.3f} of {total:.0f} answers, "
            f"replica ratio {expected:.3f}"
        )
        assert abs(share - expected) <= tolerance, (weight, share, expected, delta)
    c.wait(
        lambda: (
            not reconciling(c, "fr-canary")
            and spec_replicas(c, "fr-canary-canary") == 0
            and ready_replicas(c, "fr-canary-stable") == 4
        ),
        timeout=240,
        what="canary finished (stable on the new revision, canary at 0)",
    )
    t_done = time.monotonic()
    time.sleep(2)
    s = summarize(loop.stop())
    results.add(
        "c) canary 25% -> 50% -> promoted (4 replicas, pauses 25 s)",
        duration_s=round(t_done - t0, 1),
        requests=s["requests"],
        failed=s["failed"],
        share_at_25=f"{shares[25][0]} (ratio {shares[25][1]}, n={shares[25][2]})",
        share_at_50=f"{shares[50][0]} (ratio {shares[50][1]}, n={shares[50][2]})",
        tolerance=tolerance,
    )
    _log(f"c) first failures: {s['first_failures']}")
    assert s["failed"] == 0 and s["ok"] > 20, s  # a loop that died early sent nothing


# ---------------------------------------------------------------- d) autoscaling


def _hpa(c: RealCluster) -> dict[str, Any]:
    hpas = [h for h in c.items("hpa") if h["spec"]["scaleTargetRef"]["name"] == "fr-hpa"]
    assert len(hpas) == 1, hpas
    return hpas[0]


def _replicas_owners(c: RealCluster, name: str) -> list[str]:
    """Field managers owning spec.replicas of the Deployment."""
    owners = []
    obj = json.loads(c.kubectl("get", "deploy", name, "-n", NS, "-o", "json", "--show-managed-fields").stdout)
    for mf in obj["metadata"].get("managedFields", []):
        if "f:replicas" in json.dumps((mf.get("fieldsV1") or {}).get("f:spec", {})):
            owners.append(f"{mf['manager']}/{mf['operation']}/{mf.get('subresource', '')}")
    return owners


def test_d_the_hpa_scales_the_router_out_and_in_and_the_operator_never_fights_it(
    network: Network, results: Results
) -> None:
    c = network.cluster
    target = _hpa(c)["spec"]["scaleTargetRef"]["name"]
    c.wait(
        lambda: (
            (_hpa(c).get("status") or {}).get("currentMetrics")
            and (_hpa(c)["status"]["currentMetrics"][0].get("resource") or {})
            .get("current", {})
            .get("averageUtilization")
            is not None
        ),
        timeout=180,
        what="metrics-server feeding the HPA (status.currentMetrics)",
    )
    assert spec_replicas(c, target) == 1
    samples: list[tuple[float, int | None, int, int | None]] = []
    loop = loop_for(network, "fr-hpa", tag="d", concurrency=8, max_seconds=400).start()
    t0 = time.monotonic()

    def sample() -> tuple[float, int | None, int, int | None]:
        row = (
            time.monotonic() - t0,
            spec_replicas(c, target),
            ready_replicas(c, target),
            (_hpa(c).get("status") or {}).get("desiredReplicas"),
        )
        samples.append(row)
        return row

    c.wait(lambda: (sample()[1] or 0) >= 2, timeout=180, what="HPA scaled fr-hpa out under load")
    t_decided = time.monotonic()
    c.wait(lambda: sample()[2] >= 2, timeout=120, what="the added router pod Ready")
    t_ready = time.monotonic()
    # The operator reconciles (resync every 3 s, and a poke now): the HPA's count stays.
    c.kubectl("annotate", "-n", NS, "fr", "fr-hpa", f"realpods/poke={time.time()}", "--overwrite")
    end = time.monotonic() + 12
    while time.monotonic() < end:
        sample()
        time.sleep(1)
    peak = max(r[1] or 0 for r in samples)
    under_load = [r for r in samples if r[0] >= t_decided - t0]
    owners = _replicas_owners(c, target)
    s = summarize(loop.stop())
    t_stop = time.monotonic()
    c.wait(lambda: sample()[1] == 1, timeout=240, what="HPA scaled fr-hpa back in after the load")
    t_in = time.monotonic()
    results.add(
        "d) HPA scale-out under load and back in (min 1, max 3, CPU 50%)",
        duration_s=round(t_in - t0, 1),
        requests=s["requests"],
        failed=s["failed"],
        scale_out_decided_s=round(t_decided - t0, 1),
        scale_out_ready_s=round(t_ready - t0, 1),
        peak_replicas=peak,
        scale_in_s=round(t_in - t_stop, 1),
        replicas_under_load=sorted({r[1] for r in under_load if r[1] is not None}),
        operator_owns_replicas=any(o.startswith("fdp-operator") for o in owners),
    )
    assert min(r[1] or 0 for r in under_load) >= 2, f"replicas went back under load: {under_load}"
    assert not any(o.startswith("fdp-operator") for o in owners), owners
    assert s["failed"] == 0 and s["ok"] > 20, s  # a loop that died early sent nothing
