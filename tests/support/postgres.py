"""A throwaway PostgreSQL server for tests and benchmarks.

``FDP_TEST_PG_DSN`` set: use that server. Otherwise find the server binaries (``pg_config
--bindir``, then /usr/lib/postgresql/*/bin), ``initdb`` into a temp dir and start ``postgres``
on 127.0.0.1 with a free port and its unix socket in the temp dir, fsync on (the ledger's
durability is what is being tested). As root (CI), initdb/postgres run as the ``postgres`` OS
user via ``runuser`` (they refuse to run as root). No binaries: a clear error, never a skip.

Used by tests/unit/privacy/conftest.py and benchmarks/ledger_bench.py.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class PgServer:
    dsn: str  # admin DSN (database "postgres")
    proc: subprocess.Popen[bytes] | None = None
    datadir: Path | None = None

    def new_database(self) -> str:
        """Create a fresh database and return its DSN."""
        name = f"fdp_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return psycopg.conninfo.make_conninfo(self.dsn, dbname=name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: smart shutdown; then fast if needed
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)


def start_postgres() -> PgServer:
    env_dsn = os.environ.get("FDP_TEST_PG_DSN")
    if env_dsn:
        return PgServer(dsn=env_dsn)
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="fdp-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    init = subprocess.run(
        [
            *prefix,
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
    log = open(root / "postgres.log", "wb")
    proc = subprocess.Popen(
        [
            *prefix,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sock),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"
    server = PgServer(dsn=dsn, proc=proc, datadir=root)
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT 1")
            return server
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise PostgresUnavailable(
                    f"postgres did not start: {(root / 'postgres.log').read_text(errors='replace')[-2000:]}"
                ) from None
            time.sleep(0.2)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
