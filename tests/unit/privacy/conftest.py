"""Fixtures for the privacy core: a real PostgreSQL (session) and ledgers on both backends.

`ledger_env` is parametrized over SQLite and PostgreSQL, so every contract test runs
against both; the PostgreSQL variant is marked `postgres`. Without PostgreSQL binaries
the PostgreSQL tests fail with a clear message (CI installs them): they are never skipped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy import filter as flt
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger
from fdp_router.privacy.ledger.core import SqlLedger

from tests.support.postgres import PgServer, start_postgres

# The ledger contract is tested in its strict mode, where commit() returns once its record is
# durable (and so can fail to its caller); the default, deferred commit, has its own tests
# (test_ledger_contract.py, test_ledger_faults.py, and every router test).
CONTRACT_COMMIT_MODE = "durable"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class LedgerEnv:
    """Where a ledger lives, so tests can open it (again, or from other processes)."""

    backend: str
    ledger_cfg: LedgerConfig
    key_file: Path
    dsn: str | None = None

    async def open(self, privacy_cfg: PrivacyConfig, now: Callable[[], datetime] | None = None) -> SqlLedger:
        return await open_ledger(self.ledger_cfg, privacy_cfg, now=now)


def _key_file(tmp_path: Path, lines: str | None = None) -> Path:
    path = tmp_path / "audit.keys"
    path.write_text(lines or f"k1 {secrets.token_hex(32)}\n")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerEnv:
    key = _key_file(tmp_path)
    if request.param == "sqlite":
        cfg = LedgerConfig(
            backend="sqlite",
            sqlite_path=str(tmp_path / "ledger.sqlite"),
            audit_key_file=str(key),
            commit_mode=CONTRACT_COMMIT_MODE,
        )
        return LedgerEnv("sqlite", cfg, key)
    server: PgServer = request.getfixturevalue("pg_server")
    dsn = server.new_database()
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn)
    cfg = LedgerConfig(
        backend="postgres",
        postgres_dsn_file=str(dsn_file),
        audit_key_file=str(key),
        commit_mode=CONTRACT_COMMIT_MODE,
    )
    return LedgerEnv("postgres", cfg, key, dsn)


def policy_admitting(
    m: int, epsilon_per_query: float = 0.5, delta: float = 1e-5, **kw: object
) -> PrivacyConfig:
    """A policy whose per-user budget admits exactly `m` queries at `epsilon_per_query`,
    with the budget halfway between the m-th and (m+1)-th thresholds (no float edge)."""
    base = PrivacyConfig(
        delta=delta,
        default_epsilon_per_query=epsilon_per_query,
        max_epsilon_per_query=epsilon_per_query,
        budgets={"per_user": 1e6, "per_department": 1e6, "per_hospital": 1e6},
    )
    cost = flt.rdp_curve(event_for_request(base, None))
    t_m = flt.filter_epsilon([m * c for c in cost], delta)
    t_next = flt.filter_epsilon([(m + 1) * c for c in cost], delta)
    budget = (t_m + t_next) / 2
    data = base.model_dump()
    data["budgets"]["per_user"] = budget
    data.update(kw)
    return PrivacyConfig.model_validate(data)


@pytest.fixture
def ledger_env_sqlite(tmp_path: Path) -> LedgerEnv:
    key = _key_file(tmp_path)
    cfg = LedgerConfig(
        backend="sqlite",
        sqlite_path=str(tmp_path / "ledger.sqlite"),
        audit_key_file=str(key),
        commit_mode=CONTRACT_COMMIT_MODE,
    )
    return LedgerEnv("sqlite", cfg, key)


@pytest.fixture
def ledger_env_pg(pg_server: PgServer, tmp_path: Path) -> LedgerEnv:
    key = _key_file(tmp_path)
    dsn = pg_server.new_database()
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn)
    cfg = LedgerConfig(
        backend="postgres",
        postgres_dsn_file=str(dsn_file),
        audit_key_file=str(key),
        commit_mode=CONTRACT_COMMIT_MODE,
    )
    return LedgerEnv("postgres", cfg, key, dsn)
