"""Subcommands of `fdp-router` for the service: serve, token, demo-node, config-schema,
standalone-demo. Registered by ``cli.py`` through `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from fdp_router.config import AuthConfig, config_schema, load_config

DEMO_SECRET_ENV = "FDP_JWT_SECRET"  # noqa: S105 (an env var name)
log = logging.getLogger("fdp_router.serve")
GIL_SWITCH_INTERVAL_SECONDS = 0.0005
LOOPS = ("uvloop", "asyncio")


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The serving event loop. uvloop (libuv) runs the same request path with less CPU per
    request than the standard library's selector loop; ``asyncio`` is the fallback if a
    platform has no uvloop wheel or a deployment needs the standard loop."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the router with a config file; hot-reloads it")
    p.add_argument("--config", required=True, help="router config, YAML or JSON (see config-schema)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="router processes on the same host:port (SO_REUSEPORT; Prometheus multiprocess "
        "metrics); 1 (default) serves in this process",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="event loop: uvloop (default; libuv, less CPU per request: docs/benchmarks/router.md, "
        "round 8) or asyncio (the standard library's)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the --workers parent
    p.set_defaults(func=_serve)

    t = sub.add_parser("token", help="mint an HS256 dev token (demos and tests; production uses your IdP)")
    t.add_argument("--user", required=True)
    t.add_argument("--department", required=True)
    t.add_argument("--role", action="append", required=True, help="clinician, auditor or admin (repeatable)")
    t.add_argument("--secret-file", help=f"HS256 secret file (default: ${DEMO_SECRET_ENV})")
    t.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    t.add_argument("--config", help="take issuer/audience (and secret file) from this router config")
    t.add_argument("--issuer")
    t.add_argument("--audience")
    t.set_defaults(func=_token)

    d = sub.add_parser(
        "demo-node",
        help="run a DEMO OpenAI-compatible hospital node: synthetic patients behind a DP mechanism "
        "(phi) or a table of general medical answers (public)",
    )
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--name", required=True)
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument(
        "--data-class",
        choices=("phi", "public"),
        default="phi",
        help="phi: answers questions about its synthetic patients under record-level DP (model "
        "patient-stats); public: general medical answers at 0 epsilon (model medical-guidelines)",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic patient table (phi)")
    d.add_argument("--hospital", help="hospital whose synthetic patients this node holds (default: --name)")
    d.add_argument(
        "--patients", type=int, default=3000, help="synthetic patients (phi; also fixes the shard count)"
    )
    d.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    d.add_argument("--key", help="key of --cert")
    d.add_argument("--client-ca", help="require client certificates signed by this CA (mTLS)")
    d.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    d.add_argument("--failure-rate", type=float, default=0.0, help="fraction of requests answered with 503")
    d.add_argument("--table", help="JSON object keyword -> answer replacing the built-in public table")
    d.set_defaults(func=_demo_node)

    s = sub.add_parser("config-schema", help="print the JSON schema of the router config")
    s.set_defaults(func=_schema)

    q = sub.add_parser(
        "standalone-demo", help="three demo nodes + the router on 127.0.0.1 (examples/standalone)"
    )
    q.add_argument(
        "--smoke", action="store_true", help="send a few queries, print results, exit 0 if they worked"
    )
    q.add_argument("--config", help="router config (default: examples/standalone/router.yaml)")
    q.set_defaults(func=_standalone)


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and args.worker_index is None:
        return _serve_workers(args)
    from aiohttp import web

    from fdp_router.app import Settings, create_app
    from fdp_router.demo_node import server_ssl_context
    from fdp_router.jsonlog import setup_logging

    setup_logging(args.log_level)
    # The ledger's writer thread takes the GIL back after every SQLite call (each releases
    # it); with the default 5 ms switch interval a busy event loop delays each of those
    # re-acquisitions by up to 5 ms, so the group-commit batches (and every request waiting on
    # them) crawl. 0.5 ms keeps the writer's latency low at a negligible switching cost.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    settings = Settings.from_file(args.config, access_log=not args.no_access_log)
    srv = settings.config.server
    ssl_ctx = None
    if srv.tls_cert_file and srv.tls_key_file:
        ssl_ctx = server_ssl_context(srv.tls_cert_file, srv.tls_key_file)
    app = create_app(settings)
    if args.worker_index is not None:
        from fdp_router.workers import setup_worker

        setup_worker(app, args.worker_index)
    log.info("serving", extra={"loop": args.loop, "worker": args.worker_index})
    web.run_app(
        app,
        host=args.host or srv.host,
        port=args.port if args.port is not None else srv.port,
        ssl_context=ssl_ctx,
        access_log=None,
        print=None,
        reuse_port=True if args.worker_index is not None else None,
        loop=new_loop(args.loop),
    )
    return 0


def _serve_workers(args: argparse.Namespace) -> int:
    from fdp_router.jsonlog import setup_logging
    from fdp_router.workers import run_workers

    setup_logging(args.log_level)
    load_config(args.config)  # a bad config fails here, once, not in every worker
    serve_args = ["--config", str(Path(args.config).resolve()), "--log-level", args.log_level]
    serve_args += ["--loop", args.loop]
    if args.host:
        serve_args += ["--host", args.host]
    if args.port is not None:
        serve_args += ["--port", str(args.port)]
    if args.no_access_log:
        serve_args.append("--no-access-log")
    return run_workers(serve_args, args.workers)


def _read_secret(path: str | None) -> bytes:
    if path:
        return Path(path).read_text(encoding="utf-8").strip().encode()
    if os.environ.get(DEMO_SECRET_ENV):
        return os.environ[DEMO_SECRET_ENV].strip().encode()
    raise SystemExit(f"token: no secret: pass --secret-file or set ${DEMO_SECRET_ENV}")


def _token(args: argparse.Namespace) -> int:
    from fdp_router.auth import AuthSetupError, mint_token

    auth = load_config(args.config).auth if args.config else AuthConfig()
    secret_file = args.secret_file or auth.hs256_secret_file
    try:
        token = mint_token(
            _read_secret(secret_file),
            user=args.user,
            department=args.department,
            roles=list(args.role),
            issuer=args.issuer or auth.issuer,
            audience=args.audience or auth.audience,
            ttl_seconds=args.ttl,
        )
    except AuthSetupError as exc:
        print(f"token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _demo_node(args: argparse.Namespace) -> int:
    from aiohttp import web

    from fdp_router.demo_data import MAX_PATIENTS, MIN_PATIENTS
    from fdp_router.demo_node import DemoState, create_demo_app, load_table, server_ssl_context

    if bool(args.cert) != bool(args.key):
        print("demo-node: --cert and --key go together", file=sys.stderr)
        return 2
    if args.client_ca and not args.cert:
        print("demo-node: --client-ca needs --cert/--key (mTLS is TLS)", file=sys.stderr)
        return 2
    if not 0.0 <= args.failure_rate <= 1.0:
        print("demo-node: --failure-rate must be in [0, 1]", file=sys.stderr)
        return 2
    if not MIN_PATIENTS <= args.patients <= MAX_PATIENTS:
        print(f"demo-node: --patients must be in [{MIN_PATIENTS}, {MAX_PATIENTS}]", file=sys.stderr)
        return 2
    state = DemoState(
        name=args.name,
        delay=args.delay,
        failure_rate=args.failure_rate,
        table=load_table(args.table),
        data_class=args.data_class,
        seed=args.seed,
        hospital=args.hospital,
        patients=args.patients,
    )
    if state.data_class == "phi":
        t = state.patient_table  # built now: a bad setting fails at start, not on the first query
        what = (
            f"synthetic patients of {t.hospital!r} (seed {t.seed}, {t.patients} records, {t.shards} shards)"
        )
    else:
        what = "public table of general medical answers"
    ctx = server_ssl_context(args.cert, args.key, args.client_ca) if args.cert else None
    scheme = "https" if ctx else "http"
    print(
        f"DEMO hospital node {args.name!r} ({state.data_class}: {what}) on {scheme}://{args.host}:{args.port}",
        flush=True,
    )
    web.run_app(
        create_demo_app(state), host=args.host, port=args.port, ssl_context=ctx, access_log=None, print=None
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0


def _standalone(args: argparse.Namespace) -> int:
    from fdp_router.standalone import run_standalone

    return asyncio.run(run_standalone(config_path=args.config, smoke=args.smoke))
