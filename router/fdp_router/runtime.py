"""Settings, the runtime of one config generation, hot reload, and the app's lifecycle.

Used by ``app.py`` (`create_app` puts these under typed `web.AppKey`s and registers
`_lifecycle` as a cleanup context) and by the handlers. Hot reload: the config file is polled
(content hash); a valid new file builds a new `Runtime` and swaps it in atomically. Requests
already running keep the runtime they started with; a replaced ledger is closed only after
its last request finished. An invalid file is logged and counted, and the old config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from fdp_router.auth import Authenticator, AuthSetupError
from fdp_router.backends import BackendPool
from fdp_router.balancers import make_balancer
from fdp_router.cache import AnswerCache
from fdp_router.config import LedgerConfig, PrivacyConfig, RouterConfig, load_config
from fdp_router.errors import NoNodeAvailable
from fdp_router.ledger_health import LEDGER_HEALTH, LedgerHealth
from fdp_router.metrics import Metrics
from fdp_router.overload import OverloadLimiter
from fdp_router.privacy.api import Ledger, LedgerUnavailable, PrivacyError, Scope
from fdp_router.request_path import RequestPath, Runtime

log = logging.getLogger("fdp_router.runtime")

LedgerFactory = Callable[[LedgerConfig, PrivacyConfig], Awaitable[Ledger]]


async def _default_ledger_factory(ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig) -> Ledger:
    from fdp_router.privacy.ledger import open_ledger

    return await open_ledger(ledger_cfg, privacy_cfg)


@dataclass(frozen=True)
class Settings:
    """What `create_app` needs. `config_path` enables hot reload and admin writes."""

    config: RouterConfig
    config_path: Path | None = None
    reload_interval_seconds: float = 1.0
    ledger_factory: LedgerFactory = _default_ledger_factory
    hs256_secret: bytes | None = None  # overrides auth.hs256_secret_file/env (tests, demo)
    probes: bool = True
    access_log: bool = True

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> Settings:
        return cls(config=load_config(path), config_path=Path(path), **kw)


class RuntimeHolder:
    """The current runtime, swapped atomically on reload; counts requests per runtime."""

    def __init__(self) -> None:
        self.current: Runtime | None = None
        self.generation = 0
        self.config_hash = ""
        self.lock = asyncio.Lock()
        # Replaced runtimes whose ledger is not closed yet, each with the task that closes it
        # once drained; shutdown closes them itself (their queued commit records included).
        self.retired: dict[int, tuple[Runtime, asyncio.Task[None]]] = {}  # by id(runtime)

    def use(self) -> _Use:
        """``with holder.use() as rt:`` the current runtime, counted as in use until the block
        ends (a replaced ledger is closed only when its runtime drained)."""
        rt = self.current
        if rt is None:
            raise NoNodeAvailable("router is starting")
        return _Use(rt)


class _Use:
    """`RuntimeHolder.use`'s context manager (a class: no generator on every request)."""

    __slots__ = ("_rt",)

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def __enter__(self) -> Runtime:
        rt = self._rt
        rt.in_flight += 1
        if rt.drained.is_set():
            rt.drained.clear()
        return rt

    def __exit__(self, *exc: object) -> None:
        rt = self._rt
        rt.in_flight -= 1
        if rt.in_flight == 0:
            rt.drained.set()


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", BackendPool)
HOLDER = web.AppKey("holder", RuntimeHolder)
PATH = web.AppKey("request_path", RequestPath)
STARTED = web.AppKey("started", float)


# --- runtime construction / reload ---------------------------------------------------------


async def build_runtime(app: web.Application, cfg: RouterConfig, previous: Runtime | None) -> Runtime:
    settings = app[SETTINGS]
    authenticator = Authenticator(cfg.auth, hs256_secret=settings.hs256_secret)
    if (
        previous is not None
        and previous.config.ledger == cfg.ledger
        and previous.config.privacy == cfg.privacy
    ):
        ledger = previous.ledger
    else:
        ledger = await settings.ledger_factory(cfg.ledger, cfg.privacy)
    cache = (
        previous.cache
        if previous is not None and previous.config.cache == cfg.cache
        else AnswerCache(cfg.cache)
    )
    overload = (
        previous.overload
        if previous is not None and previous.config.overload == cfg.overload
        else OverloadLimiter(cfg.overload)
    )
    holder = app[HOLDER]
    holder.generation += 1
    rt = Runtime(
        config=cfg,
        generation=holder.generation,
        authenticator=authenticator,
        balancer=make_balancer(cfg.routing.strategy, cfg.routing.seed),
        ledger=ledger,
        cache=cache,
        overload=overload,
        query_hasher=ledger.query_hash,
        hospital_remaining=dict(previous.hospital_remaining) if previous else {},
    )
    rt.drained.set()
    return rt


async def apply_config(app: web.Application, cfg: RouterConfig, config_hash: str = "") -> Runtime:
    """Swap in a new config. Raises (and changes nothing) if the runtime cannot be built."""
    holder = app[HOLDER]
    async with holder.lock:
        old = holder.current
        rt = await build_runtime(app, cfg, old)
        try:
            app[POOL].configure(cfg.nodes, cfg.routing)
        except BaseException:
            if old is None or rt.ledger is not old.ledger:
                await rt.ledger.close()
            raise
        holder.current = rt
        if config_hash:
            holder.config_hash = config_hash
        app[METRICS].reloads.labels("ok").inc()
        log.info("config applied", extra={"generation": rt.generation, "nodes": len(cfg.nodes)})
    if old is not None and old.ledger is not rt.ledger:
        task = asyncio.get_running_loop().create_task(_close_when_drained(holder, old))
        holder.retired[id(old)] = (old, task)
    return rt


async def _close_when_drained(holder: RuntimeHolder, old: Runtime) -> None:
    try:
        await old.drained.wait()
        await old.ledger.close()
    finally:
        holder.retired.pop(id(old), None)


async def _close_retired(holder: RuntimeHolder) -> None:
    """Shutdown: close every replaced ledger now, drained or not, so that the commit records
    its requests queued are written before the process exits (its writer thread would die
    with it); a request still running on one then fails to commit and stays spent."""
    for old, task in list(holder.retired.values()):
        await old.ledger.close()  # waits for a close the drain task already began
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _watch_config(app: web.Application) -> None:
    settings = app[SETTINGS]
    assert settings.config_path is not None
    holder = app[HOLDER]
    while True:
        await asyncio.sleep(settings.reload_interval_seconds)
        try:
            digest = await asyncio.to_thread(_file_hash, settings.config_path)
        except OSError as exc:
            log.warning("config file unreadable", extra={"error": str(exc)})
            continue
        if digest == holder.config_hash:
            continue
        try:
            cfg = await asyncio.to_thread(load_config, settings.config_path)
            await apply_config(app, cfg, digest)
        except LedgerUnavailable as exc:
            # The new config needs a new ledger and its database is down: keep the old config
            # and try the same file again on the next tick.
            app[METRICS].reloads.labels("error").inc()
            log.warning("config reload postponed: its ledger is unavailable", extra={"kind": exc.kind})
        except (ValidationError, ValueError, OSError, AuthSetupError, yaml.YAMLError, PrivacyError) as exc:
            holder.config_hash = digest  # do not retry the same bad content every tick
            app[METRICS].reloads.labels("error").inc()
            log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)[:2000]})


async def _refresh_hospital_budgets(app: web.Application, interval: float = 2.0) -> None:
    """Feed the privacy-aware balancer each hospital's remaining epsilon (a little stale is
    fine: the ledger's atomic reservation stays the authority)."""
    while True:
        rt = app[HOLDER].current
        if rt is not None and rt.config.routing.strategy == "privacy_aware":
            for hospital in sorted({n.hospital for n in rt.config.nodes}):
                try:
                    st = await rt.ledger.budget(Scope.HOSPITAL, hospital)
                except LedgerUnavailable:  # logged once per outage by ledger_health
                    continue
                except Exception:
                    log.exception("hospital budget read failed", extra={"hospital": hospital})
                    continue
                rt.hospital_remaining[hospital] = st.remaining_epsilon
        await asyncio.sleep(interval)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = app[POOL]
    await pool.start()
    digest = _file_hash(settings.config_path) if settings.config_path else ""
    try:
        rt = await apply_config(app, settings.config, digest)
    except BaseException:
        await pool.close()
        raise
    if settings.probes:
        pool.start_probes()
    ledger_health = app[LEDGER_HEALTH] = LedgerHealth(app[METRICS])
    ledger_health.attach(rt.ledger)
    holder = app[HOLDER]
    tasks = [
        asyncio.create_task(_refresh_hospital_budgets(app)),
        asyncio.create_task(ledger_health.run(lambda: holder.current.ledger if holder.current else None)),
    ]
    if settings.config_path:
        tasks.append(asyncio.create_task(_watch_config(app)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
        current = app[HOLDER].current or rt
        await _close_retired(app[HOLDER])
        await current.ledger.close()
