"""The ledger under its database's faults, through a live router (issue 15).

A bounded request loop (WORKERS clients, a few seconds) runs against a real router app (the
aiohttp test client) in front of one tiny fake OpenAI-compatible node, while the ledger's
database is faulted:

- PostgreSQL frozen (SIGSTOP of every server process), then thawed;
- PostgreSQL killed (SIGKILL of every server process), then started again on the same data
  directory (crash recovery);
- PostgreSQL restarted (fast shutdown, start);
- PostgreSQL failover: the primary killed, its synchronous standby promoted, the router's DSN
  naming both hosts with ``target_session_attrs=read-write``;
- SQLite on a small tmpfs filled to the last byte, then space freed (needs root to mount; the
  test says so and skips otherwise).

For each: every failure is a 503 ``ledger_unavailable`` with ``Retry-After`` within BOUND
seconds, no 500 (no other status at all); ``/healthz`` 200 throughout, ``/readyz`` 503 while
the ledger cannot write and 200 after; requests succeed again without restarting the router;
one log line per state change; ``ledger verify`` intact; and the user's spent budget is
exactly the answered requests plus reservations of requests that failed while the fault was
on (in flight at the fault): none lost (every answered request's reservation is committed;
with the default deferred commit, one answered during the fault may instead stay reserved, its
commit record's batch having failed: spent either way, never refunded), none invented (every
spent reservation is a request that was made), and no node was called without a durable
reservation.

``FDP_FAULTS_REPORT=<file>`` appends each scenario's numbers as a JSON line (the table in
docs/benchmarks/ledger-faults.md is made from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fdp_router.app import HOLDER, Settings, create_app
from fdp_router.auth import mint_token
from fdp_router.config import LedgerConfig, LedgerTimeouts, PrivacyConfig, RouterConfig
from fdp_router.privacy.api import LedgerUnavailable
from fdp_router.privacy.audit import Keyring, load_keyring, unseal
from fdp_router.privacy.ledger import open_ledger, verify_ledger
from fdp_router.privacy.ledger.core import AUDIT_COLUMNS, SqlDriver
from fdp_router.privacy.ledger.postgres import PostgresDriver
from fdp_router.privacy.ledger.sqlite import SqliteDriver
from fdp_router.privacy.ledger.watchdog import Watchdog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.postgres import PgServer, start_postgres

pytestmark = pytest.mark.integration

SECRET = b"faults-secret-" + b"y" * 40
EPSILON = 0.1
WORKERS = 4
WARMUP, FAULT, AFTER = 0.75, 2.5, 1.5  # seconds of load before, during and after a fault
# Tight bounds so that a fault costs seconds, not minutes (the defaults are 2 / 2 / 3 / 5).
TIMEOUTS = LedgerTimeouts(connect_seconds=2, lock_seconds=0.5, statement_seconds=1.0, operation_seconds=2.0)
# A request waits for the ledger at most three times (reserve; then, if the fault hits after
# the node answered, commit and the refund attempt), each bounded by operation_seconds.
BOUND = 3 * TIMEOUTS.operation_seconds + 0.5
REPORT = os.environ.get("FDP_FAULTS_REPORT")


# --- the fake node --------------------------------------------------------------------------


@dataclass
class FakeNode:
    """An OpenAI-compatible endpoint that answers every chat and reports exactly the privacy
    it was given ({epsilon, delta} requested, mechanism pure_dp)."""

    calls: int = 0
    server: TestServer | None = None

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            self.calls += 1
            body = await request.json()
            sent = body.get("fdp_privacy") if isinstance(body.get("fdp_privacy"), dict) else {}
            eps = float(sent.get("epsilon", request.headers.get("X-FDP-Privacy-Epsilon", 0.0)))
            delta = float(sent.get("delta", request.headers.get("X-FDP-Privacy-Delta", 0.0)))
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or "fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "privacy": {"epsilon": eps, "delta": delta, "mechanism": "pure_dp"},
                }
            )

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "data": [{"id": "fake", "object": "model"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", ok)
        app.router.add_get("/health", ok)
        return app

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def node(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeNode:
    fake = FakeNode()
    fake.server = await aiohttp_server(fake.app())
    return fake


def router_config(node: FakeNode, ledger: LedgerConfig) -> RouterConfig:
    return RouterConfig.model_validate(
        {
            "nodes": [
                {
                    "id": "node-0",
                    "hospital": "hospital-0",
                    "endpoint": node.url,
                    "model": "fake",
                    "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
                }
            ],
            "privacy": {
                "default_epsilon_per_query": EPSILON,
                "max_epsilon_per_query": 1.0,
                "budgets": {"per_user": 10_000.0, "per_department": 100_000.0, "per_hospital": 1_000_000.0},
            },
            "routing": {
                "strategy": "round_robin",
                "connect_timeout_seconds": 1.0,
                "read_timeout_seconds": 5.0,
            },
            "auth": {
                "algorithms": ["HS256"],
                "issuer": "fdp-faults",
                "audience": "fdp-router-faults",
                "hs256_secret_env": None,
            },
            "cache": {"enabled": False},
            # The fault loops send bursts from one user: the per-user limit is not under test.
            "rate_limits": {
                "per_user": {"rate_per_second": 0, "burst": 0},
                "per_department": {"rate_per_second": 0, "burst": 0},
            },
            "ledger": ledger.model_dump(),
        }
    )


def _token(user: str = "alice") -> str:
    return mint_token(
        SECRET,
        user=user,
        department="cardiology",
        roles=["clinician"],
        issuer="fdp-faults",
        audience="fdp-router-faults",
    )


@pytest.fixture
def start_router(
    aiohttp_client: Callable[..., Awaitable[TestClient]], node: FakeNode
) -> Callable[[LedgerConfig], Awaitable[TestClient]]:
    async def make(ledger: LedgerConfig) -> TestClient:
        cfg = router_config(node, ledger)
        app = create_app(Settings(config=cfg, hs256_secret=SECRET, probes=False, access_log=False))
        return await aiohttp_client(app)

    return make


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "audit.keys"
    path.write_text(f"k1 {secrets.token_hex(32)}\n")
    return path


# --- the request loop -----------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    start: float
    seconds: float
    status: int  # 0: the client gave up (a hang)
    type: str | None = None
    retry_after: str | None = None


@dataclass
class Run:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    healthz: list[int] = field(default_factory=list)
    fault_at: float = 0.0
    recovered_at: float = 0.0  # the database usable again (returned from `recover`)
    budget_during_fault: int = 0  # status of a budget read at the end of the fault
    budget_after_recovery: int = 0  # status of a budget read right after recovery


async def _worker(client: TestClient, index: int, run: Run, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {_token()}"}
    n = 0
    while not stop.is_set():
        rid = f"w{index}-{n}"
        n += 1
        body = {"messages": [{"role": "user", "content": f"question {rid}"}]}
        start = time.monotonic()
        try:
            async with client.post(
                "/v1/chat/completions",
                json=body,
                headers={**headers, "X-Request-Id": rid},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                doc = await resp.json(content_type=None)
                err = doc.get("error") if isinstance(doc, dict) else None
                run.outcomes.append(
                    Outcome(
                        rid,
                        start,
                        time.monotonic() - start,
                        resp.status,
                        # OpenAI's envelope: the kind is the `code` (type is "server_error").
                        (err.get("code") or err.get("type")) if isinstance(err, dict) else None,
                        resp.headers.get("Retry-After"),
                    )
                )
        except TimeoutError:
            run.outcomes.append(Outcome(rid, start, time.monotonic() - start, 0))


async def _prober(client: TestClient, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        async with client.get("/readyz") as resp:
            run.ready.append((time.monotonic(), resp.status))
        async with client.get("/healthz") as resp:
            run.healthz.append(resp.status)
        await asyncio.sleep(0.1)


async def _budget_status(client: TestClient) -> int:
    async with client.get("/v1/privacy/budget/alice", headers={"Authorization": f"Bearer {_token()}"}) as r:
        return r.status


async def drive(
    client: TestClient,
    name: str,
    inject: Callable[[], Any],
    recover: Callable[[], Any],
    *,
    fault_seconds: float = FAULT,
) -> Run:
    """WARMUP s of load, `inject`, fault_seconds, `recover` (returns once the database is
    usable again), AFTER s of load. inject/recover run in a thread."""
    run = Run(name)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_worker(client, i, run, stop)) for i in range(WORKERS)]
    tasks.append(asyncio.create_task(_prober(client, run, stop)))
    try:
        await asyncio.sleep(WARMUP)
        run.fault_at = time.monotonic()
        await asyncio.to_thread(inject)
        await asyncio.sleep(fault_seconds)
        run.budget_during_fault = await _budget_status(client)
        await asyncio.to_thread(recover)
        run.recovered_at = time.monotonic()
        run.budget_after_recovery = await _budget_status(client)
        await asyncio.sleep(AFTER)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return run


# --- checks ---------------------------------------------------------------------------------


@dataclass
class Trail:
    """The ledger's reservations, by the request that made them (from the sealed audit trail)."""

    state_of: dict[str, str]  # request id -> reserved | committed | released
    reserves: int


def read_trail(driver: SqlDriver, keyring: Keyring) -> Trail:
    conn = driver.connect_reader()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE kind = 'reserve'")
        reserves = [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in cur.fetchall()]
        cur.execute("SELECT id, state FROM fdp_reservations")
        states = dict(cur.fetchall())
        conn.commit()
    finally:
        conn.close()
    state_of: dict[str, str] = {}
    for rec in reserves:
        request_id = unseal(keyring, rec)["request_id"]
        assert request_id not in state_of, f"request {request_id} reserved twice"
        state_of[request_id] = states[rec["reservation_id"]]
    return Trail(state_of, len(reserves))


async def check_run(
    run: Run,
    client: TestClient,
    node: FakeNode,
    driver: SqlDriver,
    keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
    *,
    expect_failures: bool = True,
    expect_not_ready: bool = True,
) -> dict[str, Any]:
    outs = run.outcomes
    statuses = sorted({o.status for o in outs})
    failures = [o for o in outs if o.status != 200]
    # 1. every failure a 503 ledger_unavailable with Retry-After, within the bound; no 500
    assert set(statuses) <= {200, 503}, f"{run.name}: statuses {statuses}"
    assert all(o.type == "ledger_unavailable" and o.retry_after for o in failures), failures[:3]
    slowest = max((o.seconds for o in failures), default=0.0)
    assert slowest <= BOUND, f"{run.name}: a failure took {slowest:.2f} s (bound {BOUND} s)"
    if expect_failures:
        assert failures, f"{run.name}: the fault never reached a client"
    # 2. recovery without restarting the router: everything started after recovery succeeds
    after = [o for o in outs if o.start >= run.recovered_at]
    assert len(after) >= WORKERS, f"{run.name}: only {len(after)} requests after recovery"
    assert all(o.status == 200 for o in after), [o for o in after if o.status != 200][:3]
    assert run.budget_during_fault in (200, 503) and run.budget_after_recovery == 200
    # 3. probes: /healthz always 200; /readyz 503 during the fault, 200 at the end
    assert set(run.healthz) == {200}
    during = [s for t, s in run.ready if run.fault_at <= t <= run.recovered_at]
    if expect_not_ready:
        assert 503 in during, f"{run.name}: /readyz stayed 200 during the fault"
    assert run.ready[-1][1] == 200, f"{run.name}: /readyz not ready after recovery"
    down_lines = [
        r for r in caplog.records if r.name == "fdp_router.ledger" and "unavailable" in r.getMessage()
    ]
    up_lines = [
        r for r in caplog.records if r.name == "fdp_router.ledger" and "available again" in r.getMessage()
    ]
    assert len(down_lines) == len(up_lines) <= 3, (
        len(down_lines),
        len(up_lines),
    )  # per change, not per request
    metrics = await (await client.get("/metrics")).text()
    assert "fdp_ledger_up 1.0" in metrics
    # 4. the audit chain and every unit's spend replay intact
    verified = verify_ledger(driver, keyring)
    assert verified.ok, verified
    # 5. none lost, none invented, nothing called without a durable reservation
    answered = {o.request_id: o for o in outs if o.status == 200}
    failed = {o.request_id: o for o in outs if o.status != 200}
    window_end = run.recovered_at + TIMEOUTS.operation_seconds
    deferred = client.app[HOLDER].current.config.ledger.commit_mode == "deferred"
    trail = read_trail(driver, keyring)
    for _ in range(40 if deferred else 0):  # the last commit records ride <= 50 ms behind
        if all(trail.state_of.get(rid) == "committed" for rid, o in answered.items() if o.start > window_end):
            break
        await asyncio.sleep(0.05)
        trail = read_trail(driver, keyring)
    uncommitted = {rid for rid in answered if trail.state_of.get(rid) != "committed"}
    if deferred:
        # The default mode: an answer whose commit record's batch failed in the fault keeps
        # its reservation (spent, never refunded); every answer outside the fault is committed.
        assert all(trail.state_of.get(rid) == "reserved" for rid in uncommitted), "an answer was refunded"
        assert all(answered[rid].start <= window_end for rid in uncommitted), (
            "an answer after the fault is not committed"
        )
    else:
        assert not uncommitted, "an answered request is not committed"
    spent = {rid for rid, state in trail.state_of.items() if state != "released"}
    assert spent <= set(answered) | set(failed), "a spent reservation no request made"
    in_flight = spent - set(answered)
    for rid in in_flight:  # failed while the fault was on
        o = failed[rid]
        assert o.start <= window_end and o.start + o.seconds >= run.fault_at, (rid, o)
    assert node.calls <= trail.reserves, "a node was called without a durable reservation"
    budget = await (
        await client.get("/v1/privacy/budget/alice", headers={"Authorization": f"Bearer {_token()}"})
    ).json()
    assert budget["details"]["queries"] == len(spent)
    assert budget["details"]["reported_epsilon_sum"] == pytest.approx(EPSILON * len(spent), rel=1e-9)
    numbers = {
        "fault": run.name,
        "requests": len(outs),
        "ok": len(answered),
        "503": len(failures),
        "500": sum(1 for o in outs if o.status == 500),
        "slowest_503_s": round(slowest, 3),
        "median_503_s": round(sorted(o.seconds for o in failures)[len(failures) // 2], 3)
        if failures
        else None,
        "not_ready_s": round(_not_ready_seconds(run), 2),
        "budget_read_during_fault": run.budget_during_fault,
        "first_ok_after_recovery_s": round(
            min(o.start + o.seconds for o in outs if o.status == 200 and o.start >= run.recovered_at)
            - run.recovered_at,
            3,
        ),
        "state_changes_logged": len(down_lines) + len(up_lines),
        "spent": len(spent),
        "spent_in_flight_at_fault": len(in_flight),
        "verify": "intact",
    }
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(numbers) + "\n")
    return numbers


def _not_ready_seconds(run: Run) -> float:
    total, prev = 0.0, None
    for t, s in run.ready:
        if prev is not None and prev[1] == 503:
            total += t - prev[0]
        prev = (t, s)
    return total


@pytest.fixture(autouse=True)
def _ledger_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fdp_router.ledger")


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A server of our own (these tests freeze, kill and restart it)."""
    server = start_postgres(own=True)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _running(server: PgServer) -> Iterator[None]:
    """Whatever a test did to the server, leave it running for the next one."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            server.thaw()
        if server.proc is None or server.proc.poll() is not None:
            server.start()


def _pg_ledger(tmp_path: Path, dsn: str) -> LedgerConfig:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn)
    return LedgerConfig(
        backend="postgres",
        postgres_dsn_file=str(dsn_file),
        audit_key_file=str(_key(tmp_path)),
        timeouts=TIMEOUTS,
    )


@pytest.mark.postgres
async def test_frozen_postgres_costs_bounded_503s_and_recovers(
    own_pg: PgServer, start_router: Any, node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _running(own_pg):
        dsn = own_pg.new_database()
        ledger = _pg_ledger(tmp_path, dsn)
        client = await start_router(ledger)
        run = await drive(client, "PostgreSQL frozen (SIGSTOP)", own_pg.freeze, own_pg.thaw)
        await check_run(run, client, node, PostgresDriver(dsn), load_keyring(ledger), caplog)


@pytest.mark.postgres
async def test_killed_postgres_costs_503s_and_a_restart_on_the_same_data_recovers(
    own_pg: PgServer, start_router: Any, node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _running(own_pg):
        dsn = own_pg.new_database()
        ledger = _pg_ledger(tmp_path, dsn)
        client = await start_router(ledger)
        run = await drive(client, "PostgreSQL killed (SIGKILL), started again", own_pg.kill, own_pg.start)
        await check_run(run, client, node, PostgresDriver(dsn), load_keyring(ledger), caplog)


@pytest.mark.postgres
async def test_restarted_postgres_gives_no_error_once_it_is_back(
    own_pg: PgServer, start_router: Any, node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restart itself takes a moment (503s meanwhile); from then on no error at all: the
    writer's dead connection is replaced and its batch run again, and so is the reader's
    (a budget read right after the restart is 200)."""
    with _running(own_pg):
        dsn = own_pg.new_database()
        ledger = _pg_ledger(tmp_path, dsn)
        client = await start_router(ledger)
        run = await drive(
            client,
            "PostgreSQL restarted (fast shutdown + start)",
            own_pg.restart,
            lambda: None,
            fault_seconds=0,
        )
        await check_run(
            run,
            client,
            node,
            PostgresDriver(dsn),
            load_keyring(ledger),
            caplog,
            expect_failures=False,
            expect_not_ready=False,
        )


@pytest.mark.postgres
async def test_failover_to_a_promoted_synchronous_standby_needs_no_router_restart(
    start_router: Any, node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A multi-host DSN with target_session_attrs=read-write: while the primary is dead and the
    standby not yet promoted there is no writable host (503); once it is promoted the router
    writes there, and (synchronous replication) no acknowledged spend was lost."""
    primary = start_postgres(own=True)
    standby: PgServer | None = None
    try:
        dbname = conninfo_to_dict(primary.new_database())["dbname"]
        standby = primary.standby(synchronous=True)
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=postgres dbname={dbname} "
            "target_session_attrs=read-write"
        )
        ledger = _pg_ledger(tmp_path, dsn)
        client = await start_router(ledger)
        run = await drive(
            client, "PostgreSQL failover (primary killed, standby promoted)", primary.kill, standby.promote
        )
        after_dsn = make_conninfo(standby.dsn, dbname=dbname)
        await check_run(run, client, node, PostgresDriver(after_dsn), load_keyring(ledger), caplog)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


@pytest.mark.postgres
async def test_a_multi_host_dsn_skips_dead_and_read_only_hosts(own_pg: PgServer, tmp_path: Path) -> None:
    """libpq semantics: hosts are tried in order; a refused one and, with
    target_session_attrs=read-write, a read-only one (a standby) are skipped."""
    readonly = start_postgres(own=True, settings={"default_transaction_read_only": "on"})
    try:
        dsn = own_pg.new_database()
        dbname = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(readonly.dsn, autocommit=True) as conn:  # so that the attempt gets that far
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'CREATE DATABASE "{dbname}"')
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]  # nothing listens there once closed
        multi = (
            f"host=127.0.0.1,127.0.0.1,127.0.0.1 port={dead},{readonly.port},{own_pg.port} "
            f"user=postgres dbname={dbname} target_session_attrs=read-write"
        )
        ledger = await open_ledger(_pg_ledger(tmp_path, multi), PrivacyConfig())
        try:
            await ledger.check()
        finally:
            await ledger.close()
        with psycopg.connect(dsn) as conn:  # the schema went to the writable server only
            assert conn.execute("SELECT count(*) FROM fdp_head").fetchone() == (1,)
        with psycopg.connect(make_conninfo(readonly.dsn, dbname=dbname)) as conn:
            assert conn.execute("SELECT to_regclass('fdp_head')").fetchone() == (None,)
    finally:
        readonly.stop()


# --- SQLite on a full disk -------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); run as root to include this fault")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has not one byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


@pytest.mark.parametrize("commit_mode", ["deferred", "durable"])
async def test_sqlite_on_a_full_disk_costs_503s_and_recovers_when_space_is_freed(
    start_router: Any,
    node: FakeNode,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    commit_mode: Literal["deferred", "durable"],
) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        ledger = LedgerConfig(
            backend="sqlite",
            sqlite_path=str(disk / "ledger.sqlite"),
            audit_key_file=str(_key(tmp_path)),
            timeouts=TIMEOUTS,
            commit_mode=commit_mode,
        )
        client = await start_router(ledger)
        filler: list[Path] = []
        run = await drive(
            client,
            "SQLite on a full disk (tmpfs filled, then freed)",
            lambda: filler.append(fill(disk)),
            lambda: filler[0].unlink(),
        )
        await check_run(run, client, node, SqliteDriver(ledger.sqlite_path), load_keyring(ledger), caplog)
        assert run.budget_during_fault == 200  # reads need no space


# --- the pieces, without a router -------------------------------------------------------------


async def test_timeouts_must_nest() -> None:
    with pytest.raises(ValueError, match="lock_seconds <= statement_seconds <= operation_seconds"):
        LedgerTimeouts(lock_seconds=3, statement_seconds=2)


async def test_an_sqlite_write_lock_held_elsewhere_is_a_bounded_busy_503(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock past lock_seconds: LedgerUnavailable(busy)
    within the bound, and the ledger works again once the lock is released."""
    ledger_cfg = LedgerConfig(
        backend="sqlite",
        sqlite_path=str(tmp_path / "l.sqlite"),
        audit_key_file=str(_key(tmp_path)),
        timeouts=TIMEOUTS,
    )
    ledger = await open_ledger(ledger_cfg, PrivacyConfig())
    other = sqlite3.connect(ledger_cfg.sqlite_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        with pytest.raises(LedgerUnavailable) as info:
            await ledger.check()
        assert info.value.kind == "busy"
        assert time.monotonic() - start <= TIMEOUTS.operation_seconds + 0.5
        other.execute("ROLLBACK")
        await ledger.check()
    finally:
        other.close()
        await ledger.close()


async def test_a_hung_reader_is_cut_off_by_the_watchdog() -> None:
    """The watchdog calls abort for a guard past its deadline, and only then."""
    dog = Watchdog()
    aborted: list[float] = []
    try:
        with dog.guard(0.2, lambda: aborted.append(time.monotonic())) as g:
            time.sleep(0.4)
        assert g.fired and len(aborted) == 1
        with dog.guard(5, lambda: aborted.append(time.monotonic())) as g2:
            pass
        assert not g2.fired and len(aborted) == 1
    finally:
        dog.stop()


async def test_ledger_health_logs_once_per_state_change_and_sets_the_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fdp_router.errors import LedgerUnavailableError
    from fdp_router.ledger_health import LedgerHealth
    from fdp_router.metrics import Metrics

    now = [100.0]
    metrics = Metrics()
    health = LedgerHealth(metrics, clock=lambda: now[0])
    gauge = metrics.registry.get_sample_value
    assert health.state.up and gauge("fdp_ledger_up") == 1.0
    for _ in range(50):  # fifty failed requests: one line
        health.observe("reserve", 2.0, LedgerUnavailableError("timeout", "frozen"))
    now[0] += 7
    for _ in range(50):
        health.observe("reserve", 0.001, None)
    lines = [r.getMessage() for r in caplog.records if r.name == "fdp_router.ledger"]
    assert len(lines) == 2 and "unavailable" in lines[0] and "available again" in lines[1]
    assert caplog.records[-1].unavailable_seconds == 7.0  # type: ignore[attr-defined]
    assert gauge("fdp_ledger_up") == 1.0
    assert gauge("fdp_ledger_errors_total", {"kind": "timeout"}) == 50
    assert gauge("fdp_ledger_operation_seconds_count", {"op": "reserve"}) == 100

    class Fake:  # no observer: its checks are what the health sees
        broken = True

        async def check(self) -> None:
            if self.broken:
                raise LedgerUnavailableError("disk_full", "no space")

    fake = Fake()
    now[0] += 2
    assert not (await health.check(fake)).up  # type: ignore[arg-type]
    assert gauge("fdp_ledger_up") == 0.0
    assert not (await health.check(fake)).up  # type: ignore[arg-type]  (cached: no new check)
    fake.broken = False
    now[0] += 2
    assert (await health.check(fake)).up  # type: ignore[arg-type]
