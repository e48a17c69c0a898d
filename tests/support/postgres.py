"""A throwaway PostgreSQL server for tests and benchmarks, and faults to inject into it.

``FDP_TEST_PG_DSN`` set: use that server. Otherwise find the server binaries (``pg_config
--bindir``, then /usr/lib/postgresql/*/bin), ``initdb`` into a temp dir and start ``postgres``
on 127.0.0.1 with a free port and its unix socket in the temp dir, fsync on (the ledger's
durability is what is being tested). As root (CI), initdb/postgres run as the ``postgres`` OS
user via ``runuser`` (they refuse to run as root). No binaries: a clear error, never a skip.

Faults (``start_postgres(own=True)``: always a server of our own, whatever the environment
says, since these signal its processes): ``freeze``/``thaw`` (SIGSTOP/SIGCONT of the
postmaster and every backend: a hung server whose kernel still accepts connections),
``kill`` (SIGKILL of all of them: a crash), ``start`` again on the same data directory and
port (crash recovery), ``restart`` (fast shutdown, then start), and ``standby`` (a streaming
replica, synchronous if asked) that ``promote`` turns into the primary (a failover).
``dump``/``restore``: a database through ``pg_dump -Fc`` / ``pg_restore`` (the ledger's
documented backup path).

Used by tests/unit/privacy/conftest.py, tests/unit/privacy/test_ledger_faults.py,
tests/unit/privacy/test_ledger_backup.py and benchmarks/ledger_bench.py.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if out and (Path(out) / "postgres").exists() and (Path(out) / "initdb").exists():
            return Path(out)
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "postgres").exists():
            return Path(cand)
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (looked at `pg_config --bindir`, /usr/lib/postgresql/*/bin). "
        "Install the server (Debian/Ubuntu: apt-get install postgresql; `make deps` does it) or set "
        "FDP_TEST_PG_DSN to an existing server's DSN."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prefix() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (the postmaster's are every backend and auxiliary process)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(stat).read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            if ppid == pid:
                out.append(int(Path(stat).parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


@dataclass
class PgServer:
    dsn: str  # admin DSN (database "postgres")
    proc: subprocess.Popen[bytes] | None = None
    datadir: Path | None = None  # the temp root: data/, sock/, postgres.log
    port: int = 0
    bindir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)

    def new_database(self) -> str:
        """Create a fresh database and return its DSN."""
        name = f"fdp_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return psycopg.conninfo.make_conninfo(self.dsn, dbname=name)

    # --- backup and restore with PostgreSQL's own tools (docs/ledger-operations.md) ---------

    def _tool(self, name: str) -> str:
        if self.bindir is not None and (self.bindir / name).exists():
            return str(self.bindir / name)
        found = shutil.which(name)
        if found:
            return found
        return str(find_bindir() / name)

    def dump(self, dsn: str, path: Path) -> None:
        """``pg_dump -Fc`` of one database: one consistent snapshot of every ledger table."""
        subprocess.run(
            [self._tool("pg_dump"), "-Fc", "--no-owner", "-f", str(path), "-d", dsn],
            check=True,
            capture_output=True,
        )

    def restore(self, path: Path) -> str:
        """``pg_restore`` a dump into a fresh database; returns its DSN."""
        dsn = self.new_database()
        subprocess.run(
            [self._tool("pg_restore"), "--no-owner", "--exit-on-error", "-d", dsn, str(path)],
            check=True,
            capture_output=True,
        )
        return dsn

    @property
    def data(self) -> Path:
        assert self.datadir is not None, "a server from FDP_TEST_PG_DSN cannot be faulted"
        return self.datadir / "data"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start (again) on the same data directory and port; returns once it accepts queries."""
        assert self.bindir is not None and self.datadir is not None
        args = [*_prefix(), str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-k", str(self.datadir / "sock"), "-c", "listen_addresses=127.0.0.1"]
        for k, v in self.settings.items():
            args += ["-c", f"{k}={v}"]
        with open(self.datadir / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if (self.proc is not None and self.proc.poll() is not None) or time.monotonic() > deadline:
                    raise PostgresUnavailable(f"postgres did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        if self.datadir is None:
            return ""
        return (self.datadir / "postgres.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.thaw()  # a frozen server would ignore SIGTERM
            self.proc.terminate()  # SIGTERM: smart shutdown; then fast if needed
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)

    # --- faults ---------------------------------------------------------------------------

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pids(self) -> list[int]:
        pm = self.postmaster_pid()
        return [pm, *_children(pm)]

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self) -> None:
        # runuser (as root) stops itself when its child stops: continue it too, or it would
        # sit on a SIGTERM forever.
        extra = [self.proc.pid] if self.proc is not None else []
        for pid in [*self.pids(), *extra]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL everything (a crash): the next start runs crash recovery."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Fast shutdown (SIGINT: sessions are terminated) then start on the same data."""
        assert self.proc is not None
        os.kill(self.postmaster_pid(), signal.SIGINT)
        self.proc.wait(timeout=30)
        self.start()

    def standby(self, *, synchronous: bool = True) -> PgServer:
        """A streaming replica of this server (pg_basebackup -R). With `synchronous`, this
        server waits for it on every commit, so a promoted standby has every acknowledged
        transaction (what a ledger on HA PostgreSQL needs: see docs/router.md)."""
        assert self.bindir is not None and self.datadir is not None
        root = Path(tempfile.mkdtemp(prefix="fdp-pg-standby-"))
        (root / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(root / "sock", "postgres", "postgres")
        backup = subprocess.run(
            [
                *_prefix(),
                str(self.bindir / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(root / "data"),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
            capture_output=True,
            text=True,
        )
        if backup.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable(f"pg_basebackup failed:\n{backup.stdout}\n{backup.stderr}")
        port = _free_port()
        # cluster_name is the walreceiver's application_name: what synchronous_standby_names names
        settings = {**self.settings, "cluster_name": "standby1"}
        standby = PgServer(
            dsn=f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5",
            datadir=root,
            port=port,
            bindir=self.bindir,
            settings=settings,
        )
        standby.start()
        if synchronous:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
                conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
                    ).fetchone()
                if row and row[0] == "sync":
                    break
                time.sleep(0.1)
            else:
                raise PostgresUnavailable("the standby never became synchronous")
        return standby

    def promote(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_promote(wait => true, wait_seconds => 30)")


def start_postgres(*, own: bool = False, settings: dict[str, str] | None = None) -> PgServer:
    """A running server: FDP_TEST_PG_DSN's unless `own`, else a fresh one of our own."""
    env_dsn = os.environ.get("FDP_TEST_PG_DSN")
    if env_dsn and not own:
        return PgServer(dsn=env_dsn)
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="fdp-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    init = subprocess.run(
        [
            *_prefix(),
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = _free_port()
    server = PgServer(
        dsn=f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5",
        datadir=root,
        port=port,
        bindir=bindir,
        settings={
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        },
    )
    try:
        server.start()
    except PostgresUnavailable:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def postgres_server(*, own: bool = False) -> Iterator[PgServer]:
    server = start_postgres(own=own)
    try:
        yield server
    finally:
        server.stop()
