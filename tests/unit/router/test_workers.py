"""`fdp-router serve --workers N`: several processes on one port, metrics summed over them."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fdp_router.auth import mint_token

BIN = Path(sys.executable).parent / "fdp-router"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def _config(tmp_path: Path, router_port: int, node_port: int) -> Path:
    (tmp_path / "audit.key").write_text(secrets.token_hex(32))
    cfg = {
        "server": {"host": "127.0.0.1", "port": router_port},
        "nodes": [
            {
                "id": "n1",
                "hospital": "h1",
                "endpoint": f"http://127.0.0.1:{node_port}",
                "privacy": {"data_class": "public"},
            }
        ],
        "ledger": {"sqlite_path": str(tmp_path / "l.sqlite"), "audit_key_file": str(tmp_path / "audit.key")},
        # One test user sends many requests: per-principal rate limits (per worker) off.
        "rate_limits": {
            "per_user": {"rate_per_second": 0, "burst": 0},
            "per_department": {"rate_per_second": 0, "burst": 0},
        },
    }
    path = tmp_path / "router.yaml"
    path.write_text(json.dumps(cfg))  # JSON is valid YAML
    return path


def _inference_count(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("fdp_requests_total{") and 'route="/v1/inference"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
def test_serve_workers_share_the_port_and_sum_their_metrics(tmp_path: Path) -> None:
    node_port, router_port = _free_port(), _free_port()
    secret = secrets.token_hex(32)
    cfg = _config(tmp_path, router_port, node_port)
    env = {**os.environ, "FDP_JWT_SECRET": secret}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    node = subprocess.Popen(
        [str(BIN), "demo-node", "--port", str(node_port), "--name", "n1", "--data-class", "public"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    router = subprocess.Popen(
        [str(BIN), "serve", "--config", str(cfg), "--workers", "2", "--no-access-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait(f"http://127.0.0.1:{node_port}/health")
        _wait(f"http://127.0.0.1:{router_port}/readyz")
        tok = mint_token(
            secret.encode(),
            user="u",
            department="d",
            roles=["clinician"],
            issuer="fdp-dev",
            audience="federated-dp-llm",
        )
        seen: set[str] = set()
        sent = 0
        deadline = time.monotonic() + 120
        # A new connection per request; the kernel spreads them over the workers (by a hash of
        # the client port, so a few tries may land on the same one; the second may also still
        # be starting).
        # The second worker may take seconds to bind on a busy machine: keep asking (slowly)
        # until both answered or the deadline passes.
        while (len(seen) < 2 or sent < 10) and time.monotonic() < deadline:
            req = urllib.request.Request(
                f"http://127.0.0.1:{router_port}/v1/inference",
                data=json.dumps({"prompt": "fever?"}).encode(),
                headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                doc = json.loads(resp.read())
                seen.add(resp.headers["X-FDP-Worker"])
            assert doc["success"] and "Fever" in doc["response"]
            sent += 1
            if len(seen) < 2:
                time.sleep(0.05)
        assert seen == {"0", "1"}, seen
        with urllib.request.urlopen(f"http://127.0.0.1:{router_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert _inference_count(text) == sent, text
        # Gauges merged as their multiprocess_mode says: one fdp_node_healthy series (min),
        # one hit-ratio series per worker pid.
        assert len(re.findall(r'^fdp_node_healthy\{node="n1"\}', text, re.M)) == 1
        assert len(set(re.findall(r'^fdp_cache_hit_ratio\{pid="(\d+)"\}', text, re.M))) == 2
    finally:
        router.send_signal(signal.SIGTERM)
        try:
            _, err = router.communicate(timeout=90)
        finally:
            node.terminate()
            node.communicate(timeout=30)
    assert router.returncode == 0, err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    started = next(ln for ln in lines if ln.get("msg") == "workers started")
    pids = started["pids"]
    for pid in json.loads(pids) if isinstance(pids, str) else pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert started["metrics_dir"] and not Path(started["metrics_dir"]).exists()  # cleaned up


@pytest.mark.integration
def test_serve_workers_exits_non_zero_when_a_worker_dies(tmp_path: Path) -> None:
    port = _free_port()
    cfg = _config(tmp_path, port, _free_port())  # no node: the workers start anyway
    env = {**os.environ, "FDP_JWT_SECRET": secrets.token_hex(32)}
    router = subprocess.Popen(
        [str(BIN), "serve", "--config", str(cfg), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/healthz")
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            out = subprocess.run(["pgrep", "-P", str(router.pid)], capture_output=True, text=True)
            pids = [int(p) for p in out.stdout.split()]
            time.sleep(0.1)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        _, err = router.communicate(timeout=90)
    finally:
        if router.poll() is None:
            router.kill()
            router.communicate()
    assert router.returncode != 0
    assert "a worker exited" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)


def test_serve_rejects_zero_workers(tmp_path: Path) -> None:
    from fdp_router.cli import main

    assert main(["serve", "--config", str(tmp_path / "x.yaml"), "--workers", "0"]) == 2
