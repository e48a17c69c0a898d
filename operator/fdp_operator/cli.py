"""`fdp-operator`: run the operator, print the CRDs, and (from the rollout engine) rollout commands.

``fdp-operator run`` checks the cluster first (preflight.py: credentials, CRDs,
permissions), then starts kopf standalone (one replica; see docs/operator.md for why kopf
peering is not leader election) with JSON logs and a liveness endpoint. Namespace scope
comes from ``--namespace`` (repeatable) or ``$WATCH_NAMESPACE`` (comma separated);
``--all-namespaces`` watches the whole cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from fdp_operator import ctl


def _namespaces(args: argparse.Namespace) -> list[str]:
    if args.all_namespaces:
        return []
    names = list(args.namespace or [])
    if not names and os.environ.get("WATCH_NAMESPACE"):
        names = [n.strip() for n in os.environ["WATCH_NAMESPACE"].split(",") if n.strip()]
    return names


async def _preflight(namespaces: list[str]) -> None:
    from fdp_operator.kube import Kube
    from fdp_operator.preflight import run_preflight

    kube = await Kube.connect()
    try:
        await run_preflight(kube, namespaces)
    finally:
        await kube.close()


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    namespaces = _namespaces(args)
    if not namespaces and not args.all_namespaces:
        print(
            "fdp-operator: no namespace to watch: pass --namespace NS (repeatable), "
            "set WATCH_NAMESPACE, or pass --all-namespaces",
            file=sys.stderr,
        )
        return 2
    if args.allowed_image_repository:
        os.environ["FDP_ALLOWED_IMAGE_REPOSITORIES"] = ",".join(args.allowed_image_repository)
    if args.default_ingress_from:
        os.environ["FDP_DEFAULT_INGRESS_FROM"] = args.default_ingress_from
    if args.allowed_priority_class:
        os.environ["FDP_ALLOWED_PRIORITY_CLASSES"] = ",".join(args.allowed_priority_class)
    if args.allowed_toleration_key:
        os.environ["FDP_ALLOWED_TOLERATION_KEYS"] = ",".join(args.allowed_toleration_key)
    from fdp_operator.security import OperatorSettings

    try:
        settings = OperatorSettings.from_env(os.environ)
    except ValueError as exc:
        print(f"fdp-operator: {exc}", file=sys.stderr)
        return 2
    try:
        from kubernetes.config import ConfigException

        asyncio.run(_preflight(namespaces))
    except ConfigException as exc:
        print(
            f"fdp-operator: no Kubernetes credentials (set KUBECONFIG or run in a pod): {exc}",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        from fdp_operator.preflight import PreflightError

        if isinstance(exc, PreflightError):
            print(f"fdp-operator: {exc}", file=sys.stderr)
            return 2
        raise
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every timer tick at INFO; our own logger reports the transitions.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from fdp_operator.handlers import OperatorConfig, build_registry

    kopf.run(
        registry=build_registry(OperatorConfig(args.resync_seconds, args.probe_tick_seconds), settings),
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://{args.liveness_host}:{args.liveness_port}/healthz",
    )
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    from fdp_operator.crds import all_crds, to_yaml

    for crd in all_crds():
        sys.stdout.write("---\n" + to_yaml(crd))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdp-operator", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the operator (kopf) against $KUBECONFIG or in-cluster")
    run.add_argument("-n", "--namespace", action="append", help="namespace to watch (repeatable)")
    run.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument("--liveness-host", default=os.environ.get("FDP_LIVENESS_HOST", "0.0.0.0"))
    run.add_argument("--liveness-port", type=int, default=int(os.environ.get("FDP_LIVENESS_PORT", "8080")))
    run.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("FDP_RESYNC_SECONDS", "10")),
        help="how often routers and policies are re-checked (node health, renewals)",
    )
    run.add_argument(
        "--probe-tick-seconds",
        type=float,
        default=float(os.environ.get("FDP_PROBE_TICK_SECONDS", "1")),
        help="granularity of HospitalNode probe scheduling",
    )
    run.add_argument(
        "--allowed-image-repository",
        action="append",
        metavar="REPO",
        help="image repository a FederatedRouter may run (repeatable; 'registry/org/*' allows a "
        "whole path); default: $FDP_ALLOWED_IMAGE_REPOSITORIES or ghcr.io/federated-dp-llm/router",
    )
    run.add_argument(
        "--allowed-priority-class",
        action="append",
        metavar="NAME",
        help="PriorityClass a FederatedRouter's spec.scheduling may name (repeatable; '*' any); "
        "default: $FDP_ALLOWED_PRIORITY_CLASSES or any class but system-cluster-critical and "
        "system-node-critical",
    )
    run.add_argument(
        "--allowed-toleration-key",
        action="append",
        metavar="KEY",
        help="toleration key a FederatedRouter's spec.scheduling may use (repeatable; '*' any, "
        "key-less included); default: $FDP_ALLOWED_TOLERATION_KEYS or any key, never a key-less one",
    )
    run.add_argument(
        "--default-ingress-from",
        metavar="JSON",
        help="NetworkPolicyPeer list admitted to routers whose spec.networkPolicy.ingressFrom is "
        "empty; default: $FDP_DEFAULT_INGRESS_FROM or the router's own namespace",
    )
    run.add_argument(
        "--log-format", choices=["json", "text"], default=os.environ.get("FDP_LOG_FORMAT", "json")
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)
    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions as YAML")
    crds.set_defaults(func=cmd_crds)
    ctl.register(sub)  # promote / abort / pause / resume / status (the rollout engine's intents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
