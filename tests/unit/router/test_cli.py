"""The service's CLI commands, run as a user would (subprocesses, real ports)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from fdp_router.auth import mint_token
from fdp_router.cli import main

BIN = Path(sys.executable).parent / "fdp-router"


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real `fdp-router` entry point, in-process (a subprocess re-imports the accounting
    libraries, which takes seconds on a busy machine)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_config_schema_is_the_router_config_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "config-schema")
    assert code == 0, err
    schema = json.loads(out)
    assert schema["title"] == "RouterConfig"
    for key in ("nodes", "privacy", "routing", "auth", "ledger", "cache", "overload", "managed_by"):
        assert key in schema["properties"]


def test_token_mints_a_verifiable_hs256_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = secrets.token_hex(32)
    f = tmp_path / "secret"
    f.write_text(secret)
    code, out, err = _cli(
        capsys,
        "token",
        "--user",
        "dr-a",
        "--department",
        "cardiology",
        "--role",
        "clinician",
        "--secret-file",
        str(f),
        "--ttl",
        "120",
    )
    assert code == 0, err
    claims = jwt.decode(
        out.strip(), secret, algorithms=["HS256"], audience="federated-dp-llm", issuer="fdp-dev"
    )
    assert claims["sub"] == "dr-a" and claims["roles"] == ["clinician"]
    assert claims["exp"] - claims["iat"] == 120
    code, _, err = _cli(
        capsys, "token", "--user", "x", "--department", "d", "--role", "wizard", "--secret-file", str(f)
    )
    assert code == 2 and "wizard" in err


def test_demo_node_rejects_inconsistent_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "demo-node", "--port", "1", "--name", "x", "--client-ca", "ca.pem")
    assert code == 2 and "--client-ca" in err
    code, _, err = _cli(capsys, "demo-node", "--port", "1", "--name", "x", "--failure-rate", "2")
    assert code == 2 and "failure-rate" in err


@pytest.mark.integration
@pytest.mark.parametrize("loop", [None, "asyncio"])
def test_serve_runs_the_router_against_a_demo_node(tmp_path: Path, loop: str | None) -> None:
    """`fdp-router serve` answers on uvloop by default, on the standard loop with --loop asyncio."""
    node_port, router_port = _free_port(), _free_port()
    secret = secrets.token_hex(32)
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
    }
    (tmp_path / "router.yaml").write_text(json.dumps(cfg))  # JSON is valid YAML
    env = {**os.environ, "FDP_JWT_SECRET": secret}
    node = subprocess.Popen(
        [str(BIN), "demo-node", "--port", str(node_port), "--name", "n1", "--data-class", "public"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    router = subprocess.Popen(
        [str(BIN), "serve", "--config", str(tmp_path / "router.yaml"), *(["--loop", loop] if loop else [])],
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
        req = urllib.request.Request(
            f"http://127.0.0.1:{router_port}/v1/inference",
            data=json.dumps({"prompt": "fever?"}).encode(),
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc = json.loads(resp.read())
            rid = resp.headers["X-Request-Id"]
            assert doc["success"] and doc["node_id"] == "n1" and "Fever" in doc["response"]
        assert doc["privacy_cost"] == 0.0 and doc["privacy"]["basis"].startswith("public data")
    finally:
        router.terminate()
        node.terminate()
        _, err = router.communicate(timeout=30)
        node.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [
        ln for ln in lines if ln.get("logger") == "fdp_router.access" and ln.get("route") == "/v1/inference"
    ]
    assert access and access[0]["request_id"] == rid and access[0]["status"] == 200
    assert "fever" not in err.lower()  # prompts are never logged
    serving = [ln for ln in lines if ln.get("msg") == "serving"]
    assert serving and serving[0]["loop"] == (loop or "uvloop"), serving


@pytest.mark.integration
def test_standalone_demo_smoke() -> None:
    proc = _run("standalone-demo", "--smoke", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: OK" in proc.stdout
    assert "curl -s http://127.0.0.1:" in proc.stdout
    assert "from openai import OpenAI" in proc.stdout
