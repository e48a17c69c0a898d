"""The admin API, attacked (issue 11, item 3): it cannot reset budgets, weaken
authentication or privacy, or point a file setting at a secret; every change, applied or
refused, is a hash-chained audit record with its actor and a log line naming the actor."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from fdp_router.admin import ADMIN, locked_change
from fdp_router.admin_audit import verify_log
from fdp_router.config import RouterConfig
from fdp_router.runtime import HOLDER, METRICS

from .conftest import Cluster, RouterFactory, auth, q, token

ADMIN_AUTH = auth(token(user="root", department="it", roles=["admin"]))


async def _standalone(
    router: RouterFactory, demo_cluster: Cluster, **overrides: Any
) -> tuple[TestClient, Path]:
    """A router run from a config file, as `fdp-router serve --config` runs it."""
    cfg = demo_cluster.config(**overrides)
    path = demo_cluster.tmp / "router.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return await router(cfg, config_path=path), path


async def _config(client: TestClient) -> dict[str, Any]:
    doc: dict[str, Any] = (await (await client.get("/v1/admin/config", headers=ADMIN_AUTH)).json())["config"]
    return doc


async def _put(client: TestClient, cfg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = await client.put("/v1/admin/config", json=cfg, headers=ADMIN_AUTH)
    return r.status, await r.json()


async def _remaining(client: TestClient, user: str = "alice") -> float:
    doc = await (await client.get(f"/v1/privacy/budget/{user}", headers=auth(token(user=user)))).json()
    return float(doc["remaining_budget"])


async def test_swapping_the_ledger_file_does_not_give_budget_back(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client, path = await _standalone(router, demo_cluster)
    r = await client.post("/v1/inference", json={"prompt": q("spend"), "privacy_budget": 0.5}, headers=auth())
    assert r.status == 200
    before = await _remaining(client)
    assert before < 2.0
    file_before = path.read_bytes()
    cfg = await _config(client)
    cfg["ledger"]["sqlite_path"] = str(demo_cluster.tmp / "fresh-ledger.sqlite")
    status, doc = await _put(client, cfg)
    assert status == 400
    assert doc["error"]["field"] == "ledger.sqlite_path"
    assert "change the config file" in doc["error"]["message"]
    assert await _remaining(client) == before
    assert not (demo_cluster.tmp / "fresh-ledger.sqlite").exists()
    assert path.read_bytes() == file_before  # nothing written either


async def test_etc_passwd_as_the_jwt_secret_is_refused_and_cannot_sign_tokens(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client, _ = await _standalone(router, demo_cluster)
    cfg = await _config(client)
    cfg["auth"]["hs256_secret_file"] = "/etc/passwd"
    status, doc = await _put(client, cfg)
    assert status == 400 and doc["error"]["field"] == "auth.hs256_secret_file"
    passwd = Path("/etc/passwd").read_bytes().strip() if Path("/etc/passwd").exists() else b"root:x:0:0" * 4
    forged = jwt.encode(
        {
            "sub": "mallory",
            "department": "it",
            "roles": ["admin"],
            "iss": "fdp-test",
            "aud": "fdp-router-test",
            "exp": 2_000_000_000,
            "iat": 1_900_000_000,
        },
        passwd,
        algorithm="HS256",
    )
    assert (await client.get("/v1/admin/config", headers=auth(forged))).status == 401


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        (
            "privacy",
            "budgets",
            {"per_user": 1000.0, "per_department": 1000.0, "per_hospital": 1000.0},
            "privacy.budgets.per_user",
        ),
        ("privacy", "max_epsilon_per_query", 2.0, "privacy.max_epsilon_per_query"),
        ("auth", "issuer", "evil-idp", "auth.issuer"),
        ("auth", "algorithms", ["HS256", "RS256"], "auth.algorithms"),
        ("auth", "require_mfa", False, None),  # unchanged: accepted
        ("auth", "max_token_age_seconds", 10**6, "auth.max_token_age_seconds"),
        ("ledger", "audit_key_file", "/tmp/attacker.key", "ledger.audit_key_file"),
        ("ledger", "backend", "postgres", "ledger.backend"),
    ],
)
async def test_privacy_auth_and_ledger_settings_are_not_changeable_through_the_api(
    router: RouterFactory, demo_cluster: Cluster, section: str, key: str, value: Any, field: str | None
) -> None:
    client = await router()
    cfg = await _config(client)
    generation = client.app[HOLDER].current.generation
    cfg[section][key] = value
    status, doc = await _put(client, cfg)
    if field is None:
        assert status == 200, doc
        return
    assert status == 400, doc
    assert doc["error"]["field"] == field
    assert client.app[HOLDER].current.generation == generation


async def test_node_privacy_declarations_are_not_changeable_through_the_api(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    cfg = await _config(client)
    cfg["nodes"][0]["privacy"] = {"data_class": "public", "mechanism": "none"}
    status, doc = await _put(client, cfg)
    assert status == 400 and doc["error"]["field"] == "nodes[node-0].privacy.data_class"
    # a new node declared public would release a hospital's answers at 0 epsilon
    public = {
        "id": "sneaky",
        "hospital": "h",
        "endpoint": demo_cluster.nodes[0].url,
        "privacy": {"data_class": "public", "mechanism": "none"},
    }
    r = await client.post("/v1/admin/nodes", json=public, headers=ADMIN_AUTH)
    assert r.status == 400 and (await r.json())["error"]["field"] == "nodes[sneaky].privacy.data_class"
    # a new PHI node with a mechanism is an ordinary admin change
    phi = {**public, "id": "extra", "privacy": {"data_class": "phi", "mechanism": "pure_dp"}}
    assert (await client.post("/v1/admin/nodes", json=phi, headers=ADMIN_AUTH)).status == 201


async def test_file_settings_cannot_point_at_secrets_or_outside_the_configs_directories(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client, path = await _standalone(router, demo_cluster)
    tmp = demo_cluster.tmp
    (tmp / "escape").symlink_to("/etc/passwd")
    (tmp / "node-key").write_text("a-key-for-the-new-node\n")
    attempts = {
        "/etc/passwd": "outside",
        str(tmp / ".." / ".." / "etc" / "passwd"): "outside through ..",
        str(tmp / "escape"): "a symlink out",
        str(demo_cluster.audit_key): "the ledger's audit key (sent to the node as its API key)",
        str(tmp / "ledger.sqlite"): "the ledger",
        str(tmp / "ledger.sqlite-wal"): "the ledger's WAL",
        str(path): "the config itself",
        str(path) + ".admin-audit.jsonl": "the admin audit log",
    }
    for value, what in attempts.items():
        node = {
            "id": "exfil",
            "hospital": "h",
            "endpoint": "http://203.0.113.7:9",
            "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
            "auth": {"api_key_file": value},
        }
        r = await client.post("/v1/admin/nodes", json=node, headers=ADMIN_AUTH)
        assert r.status == 400, what
        assert (await r.json())["error"]["field"] == "nodes[exfil].auth.api_key_file", what
    cfg = await _config(client)
    cfg["server"]["tls_key_file"] = "/etc/shadow"
    status, doc = await _put(client, cfg)
    assert status == 400 and doc["error"]["field"] == "server.tls_key_file"
    # a new file in a directory the config uses is fine
    node = {
        "id": "ok-node",
        "hospital": "h",
        "endpoint": demo_cluster.nodes[0].url,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
        "auth": {"api_key_file": str(tmp / "node-key")},
    }
    r = await client.post("/v1/admin/nodes", json=node, headers=ADMIN_AUTH)
    assert r.status == 201, await r.text()
    # a file the node cannot use is the admin's 400 (and a "failed" audit record), not a 500
    (tmp / "bad-ca.pem").write_text("not a certificate\n")
    node = {
        **node,
        "id": "bad-node",
        "endpoint": "https://127.0.0.1:9",
        "auth": {},
        "tls": {"ca_file": str(tmp / "bad-ca.pem")},
    }
    r = await client.post("/v1/admin/nodes", json=node, headers=ADMIN_AUTH)
    assert r.status == 400, await r.text()
    assert "cannot be used" in (await r.json())["error"]["message"]
    outcomes = [
        json.loads(line)["outcome"]
        for line in Path(str(path) + ".admin-audit.jsonl").read_text().splitlines()
    ]
    assert outcomes[-3:] == ["applied", "applied", "failed"]  # ok-node; bad-node recorded, then failed
    sample = client.app[METRICS].registry.get_sample_value
    assert sample("fdp_access_violations_total", {"reason": "admin_file_path"}) == len(attempts) + 1


async def test_every_admin_change_is_an_audit_record_with_its_actor_and_a_log_line(
    router: RouterFactory, demo_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    client, path = await _standalone(router, demo_cluster)
    log_path = Path(str(path) + ".admin-audit.jsonl")
    caplog.set_level(logging.INFO, logger="fdp_router.admin")
    cfg = await _config(client)
    cfg["routing"]["strategy"] = "least_request"
    cfg["rate_limits"]["per_user"] = {"rate_per_second": 3, "burst": 30}
    assert (await _put(client, cfg))[0] == 200
    cfg["ledger"]["sqlite_path"] = "/tmp/elsewhere.sqlite"
    assert (await _put(client, cfg))[0] == 400
    assert (await client.delete("/v1/admin/nodes/node-2", headers=ADMIN_AUTH)).status == 200

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("config.replace", "applied"),
        ("config.replace", "refused"),
        ("node.delete", "applied"),
    ]
    assert all(r["actor"] == "root" and r["actor_roles"] == ["admin"] for r in records)
    assert records[0]["changes"] == [
        "routing.strategy",
        "rate_limits.per_user.rate_per_second",
        "rate_limits.per_user.burst",
    ]
    assert records[1]["reason"] == "admin_locked_field" and "ledger.sqlite_path" in records[1]["detail"]
    assert records[2]["changes"][0].startswith("nodes")
    assert verify_log(log_path) == (3, records[-1]["hash"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "fdp_router.admin"]
    assert lines == [
        "admin config.replace applied by root",
        "admin config.replace refused by root",
        "admin node.delete applied by root",
    ]
    # the chain survives a restart (a new app appends after the same head)
    again = await router(RouterConfig.model_validate(json.loads(path.read_text())), config_path=path)
    assert (await again.delete("/v1/admin/nodes/node-1", headers=ADMIN_AUTH)).status == 200
    assert verify_log(log_path)[0] == 4
    assert again.app[ADMIN].audit.records[0]["seq"] == 4


def test_an_edited_or_removed_audit_line_breaks_the_chain(tmp_path: Path) -> None:
    from fdp_router.admin_audit import AdminAuditLog

    path = tmp_path / "a.jsonl"
    log = AdminAuditLog(path)
    for i in range(4):
        log.append(actor=f"admin-{i}", action="config.replace", outcome="applied", changes=[])
    lines = path.read_text().splitlines()
    assert verify_log(path)[0] == 4
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one record deleted
    with pytest.raises(ValueError, match=":2: the admin audit chain is broken"):
        verify_log(path)
    path.write_text("\n".join([lines[0], lines[1].replace("admin-1", "someone"), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=":2:"):
        verify_log(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_locked_change_names_the_first_locked_field_in_config_order() -> None:
    old = RouterConfig()
    new = RouterConfig.model_validate({"auth": {"issuer": "x"}, "ledger": {"sqlite_path": "y"}})
    assert locked_change(old, new) == "auth.issuer"
    assert locked_change(old, RouterConfig.model_validate({"routing": {"strategy": "round_robin"}})) is None


def _append_many(path: str, n: int, go: Any) -> None:
    from fdp_router.admin_audit import AdminAuditLog

    log = AdminAuditLog(Path(path))
    go.wait(30)  # both processes append at the same time
    for i in range(n):
        log.append(action="test", outcome="applied", actor=f"worker-{os.getpid()}", detail=str(i))


def test_the_admin_audit_log_stays_one_chain_with_several_worker_processes(tmp_path: Path) -> None:
    # serve --workers N: two processes appending at once must not write the same sequence number.
    import multiprocessing

    from fdp_router.admin_audit import verify_log

    path = tmp_path / "router.yaml.admin-audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(path), 150, go)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records, _ = verify_log(path)
    assert records == 300
