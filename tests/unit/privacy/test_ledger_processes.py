"""No overspend across OS processes, and crash safety under SIGKILL.

- several processes hammer one user on one SQLite file: exactly M admitted, every round;
- two processes hammer one user through one PostgreSQL: exactly M admitted, every round;
- a process under load is SIGKILLed (several times): every reservation it acknowledged is
  still in the ledger and counted in the unit's budget, and ``ledger verify`` passes; a
  hand-edited audit record is then detected (CLI exits 1 and names the record).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from fdp_router.cli import main as cli_main
from fdp_router.config import PrivacyConfig
from fdp_router.privacy.api import Charge, Scope
from fdp_router.privacy.events import event_for_request

from .conftest import LedgerEnv, policy_admitting

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("ledger_worker.py")


def _spawn(mode: str, env: LedgerEnv, cfg: PrivacyConfig, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            mode,
            "--ledger-json",
            env.ledger_cfg.model_dump_json(),
            "--policy-json",
            cfg.model_dump_json(),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _hammer_rounds(env: LedgerEnv, cfg: PrivacyConfig, procs: int, rounds: int, tmp: Path) -> list[int]:
    """Start `procs` workers once; per round, release them together on one fresh user."""
    start = tmp / "go"
    workers = [
        _spawn(
            "hammer",
            env,
            cfg,
            "--n",
            "60",
            "--user",
            "user",
            "--concurrency",
            "16",
            "--start-file",
            str(start),
            "--rounds",
            str(rounds),
        )
        for _ in range(procs)
    ]
    totals = []
    try:
        for round_ in range(rounds):
            for w in workers:  # every worker has opened the ledger and waits at the barrier
                assert w.stdout is not None
                line = w.stdout.readline()
                assert line.strip() == f"READY {round_}", (line, w.stderr.read() if w.stderr else "")
            Path(f"{start}-{round_}").touch()
            total = 0
            for w in workers:
                assert w.stdout is not None
                parts = w.stdout.readline().split()
                assert parts[:2] == ["ADMITTED", str(round_)], parts
                total += int(parts[2])
            totals.append(total)
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    return totals


def test_several_processes_on_one_sqlite_file_admit_exactly_m(
    ledger_env_sqlite: LedgerEnv, tmp_path: Path
) -> None:
    m = 15
    assert _hammer_rounds(ledger_env_sqlite, policy_admitting(m), 3, 3, tmp_path) == [m, m, m]


@pytest.mark.postgres
def test_two_processes_on_one_postgres_admit_exactly_m(ledger_env_pg: LedgerEnv, tmp_path: Path) -> None:
    m = 15
    assert _hammer_rounds(ledger_env_pg, policy_admitting(m), 2, 3, tmp_path) == [m, m, m]


def _count_reserved(env: LedgerEnv, ids: list[str]) -> tuple[int, int]:
    with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
        present = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            present |= {
                r[0] for r in conn.execute(f"SELECT id FROM fdp_reservations WHERE id IN ({marks})", chunk)
            }
        charged = conn.execute(
            "SELECT n_queries FROM fdp_units WHERE scope='hospital' AND unit_key='h1'"
        ).fetchone()
    return len(present), int(charged[0]) if charged else 0


def test_sigkill_under_load_loses_no_acknowledged_reservation(
    ledger_env_sqlite: LedgerEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ledger_env_sqlite
    cfg = PrivacyConfig()
    acked: list[str] = []
    for _ in range(3):
        proc = _spawn("load", env, cfg, "--concurrency", "16")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("ACK "):
                acked.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)  # lines already written before the kill
        acked += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("ACK ")]
        assert proc.returncode == -signal.SIGKILL
    assert len(acked) > 50
    present, charged = _count_reserved(env, acked)
    assert present == len(acked)
    assert charged >= len(acked)  # the hospital unit counts every acknowledged spend

    async def restart() -> int:  # the ledger reopens after the crashes and keeps counting
        ledger = await env.open(cfg)
        try:
            await ledger.reserve(Charge("after-restart", "dept", ("h1",), event_for_request(cfg, None)))
            return int((await ledger.budget(Scope.HOSPITAL, "h1")).extra["queries"])
        finally:
            await ledger.close()

    assert asyncio.run(restart()) == charged + 1
    assert (
        cli_main(
            ["ledger", "verify", "--sqlite", env.ledger_cfg.sqlite_path, "--key-file", str(env.key_file)]
        )
        == 0
    )
    assert "chain intact" in capsys.readouterr().out

    # hand-edit one record (an attacker would first drop the append-only trigger)
    with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
        conn.execute("DROP TRIGGER fdp_audit_no_update")
        conn.execute("UPDATE fdp_audit SET epsilon = 0.0001 WHERE seq = 7")
    assert (
        cli_main(
            ["ledger", "verify", "--sqlite", env.ledger_cfg.sqlite_path, "--key-file", str(env.key_file)]
        )
        == 1
    )
    assert "BROKEN at record 7" in capsys.readouterr().out


def test_deleted_record_is_detected(ledger_env_sqlite: LedgerEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env = ledger_env_sqlite
    cfg = PrivacyConfig()

    async def fill() -> None:
        ledger = await env.open(cfg)
        for i in range(5):
            await ledger.reserve(Charge(f"u{i}", "d", ("h",), event_for_request(cfg, None)))
        await ledger.close()

    asyncio.run(fill())
    with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
        conn.execute("DROP TRIGGER fdp_audit_no_delete")
        conn.execute("DELETE FROM fdp_audit WHERE seq = 3")
    assert (
        cli_main(
            [
                "ledger",
                "verify",
                "--sqlite",
                env.ledger_cfg.sqlite_path,
                "--key-file",
                str(env.key_file),
                "--json",
            ]
        )
        == 1
    )
    assert '"first_bad_seq": 3' in capsys.readouterr().out


@pytest.mark.postgres
def test_postgres_ledger_verify_cli(ledger_env_pg: LedgerEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env = ledger_env_pg
    cfg = PrivacyConfig()

    async def fill() -> None:
        ledger = await env.open(cfg)
        for i in range(4):
            await ledger.reserve(Charge(f"u{i}", "d", ("h",), event_for_request(cfg, None)))
        await ledger.close()

    asyncio.run(fill())
    args = ["ledger", "verify", "--dsn", env.dsn or "", "--key-file", str(env.key_file)]
    assert cli_main(args) == 0
    with psycopg.connect(env.dsn or "", autocommit=True) as conn:
        conn.execute("ALTER TABLE fdp_audit DISABLE TRIGGER fdp_audit_no_change")
        conn.execute("UPDATE fdp_audit SET kind = 'release' WHERE seq = 2")
    capsys.readouterr()
    assert cli_main(args) == 1
    assert "BROKEN at record 2" in capsys.readouterr().out
