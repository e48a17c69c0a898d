"""`fdp-router serve --workers N`: N router processes on one host:port.

The parent (`run_workers`) starts N child processes, each `fdp-router serve` with the same
config and a hidden ``--worker-index``; each child binds host:port with ``SO_REUSEPORT``, so
the kernel spreads new connections over them. The parent forwards SIGTERM/SIGINT to every
worker (as SIGTERM, once), and stops the others and exits non-zero as soon as one worker
exits on its own. A worker whose parent disappeared (SIGKILL) stops itself
(`watch_parent`).

Prometheus multiprocess mode: the parent creates a fresh ``PROMETHEUS_MULTIPROC_DIR`` for
the run, hands it to the workers (prometheus_client picks its value class when it is first
imported, so this must be in the environment of a fresh interpreter) and removes it when all
workers have exited. ``metrics.py`` then renders `/metrics` from all workers' files.

What is shared: the privacy ledger (one database, safe across processes). What is per
process: rate-limit buckets and the brute-force lockout, the answer cache, the overload
limiter's queue, node health and outlier ejection (docs/router.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from types import FrameType

from aiohttp import web

from fdp_router.metrics import MULTIPROC_ENV

log = logging.getLogger("fdp_router.workers")

WORKER_HEADER = "X-FDP-Worker"
STOP_GRACE_SECONDS = 75.0  # aiohttp's own shutdown timeout is 60 s
POLL_SECONDS = 0.2
WORKER_INDEX = web.AppKey("worker_index", int)


def worker_argv(serve_args: Sequence[str], index: int) -> list[str]:
    return [sys.executable, "-m", "fdp_router.cli", "serve", *serve_args, "--worker-index", str(index)]


def run_workers(serve_args: Sequence[str], workers: int) -> int:
    """Start `workers` copies of `fdp-router serve <serve_args>` and supervise them.
    Returns 0 if they all stopped cleanly after SIGTERM/SIGINT, else non-zero."""
    mp_dir = tempfile.mkdtemp(prefix="fdp-router-metrics-")
    env = {**os.environ, MULTIPROC_ENV: mp_dir, "FDP_ROUTER_PARENT_PID": str(os.getpid())}
    env.pop("prometheus_multiproc_dir", None)
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    code = 0
    try:
        for i in range(workers):
            # Own session: a Ctrl-C at the terminal reaches only the parent, which forwards
            # one SIGTERM (two signals would interrupt a worker's graceful shutdown).
            procs.append(subprocess.Popen(worker_argv(serve_args, i), env=env, start_new_session=True))
        log.info(
            "workers started",
            extra={"workers": workers, "pids": [p.pid for p in procs], "metrics_dir": mp_dir},
        )
        while not stop_requested:
            dead = [(i, p.returncode) for i, p in enumerate(procs) if p.poll() is not None]
            if dead:
                i, rc = dead[0]
                log.error("a worker exited; stopping the others", extra={"worker": i, "returncode": rc})
                code = rc if rc else 1
                break
            time.sleep(POLL_SECONDS)
        if stop_requested:
            log.info("stopping workers", extra={"signal": signal.Signals(stop_requested[0]).name})
        stopped = _stop(procs)
        code = code or stopped
    finally:
        _stop(procs)
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(mp_dir, ignore_errors=True)
    return code


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> int:
    """SIGTERM every live worker, wait, SIGKILL what is left. Returns 0 if all exited 0."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    code = 0
    for p in procs:
        try:
            rc = p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        if rc != 0:
            code = 1
    return code


async def watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Stop this worker (graceful SIGTERM to itself) once its parent is gone."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 (no event to wait on: polling the pid)
        await asyncio.sleep(interval)
    log.warning("parent process gone; stopping this worker")
    os.kill(os.getpid(), signal.SIGTERM)


def setup_worker(app: web.Application, index: int) -> None:
    """Per-worker additions to the app: the `X-FDP-Worker` response header (the worker's
    index, 0..N-1; nothing else about the process) and the parent watchdog."""
    app[WORKER_INDEX] = index
    value = str(index)

    async def add_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = value

    app.on_response_prepare.append(add_header)
    parent = os.environ.get("FDP_ROUTER_PARENT_PID")
    if parent:
        parent_pid = int(parent)

        async def watchdog(_app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(watch_parent(parent_pid))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(watchdog)
