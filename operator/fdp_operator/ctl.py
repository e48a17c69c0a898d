"""Rollout commands of ``fdp-operator``: promote, abort, pause, resume, status.

``cli.py`` calls ``register(subparsers)``. Each command only PATCHes the FederatedRouter's
metadata or spec (never its status) with the current kubeconfig, so a GitOps user can do
exactly the same from Git:

* ``promote NAME [--full]``: annotation ``fdp.io/promote: <token>`` (``full:<token>``),
  acted on once by the rollout engine (see ``rollout/intents.py``);
* ``abort NAME``: annotation ``fdp.io/abort: <token>``;
* ``pause NAME`` / ``resume NAME``: ``spec.rollout.paused: true/false``;
* ``status NAME``: prints the rollout state and conditions (read only).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fdp_operator.models import GROUP, VERSION
from fdp_operator.rollout.intents import ABORT_ANNOTATION, PROMOTE_ANNOTATION, promote_value

PLURAL = "federatedrouters"


class RouterAPI(Protocol):
    def get(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class CtlError(Exception):
    """A failure to report in one line (exit code 1)."""


def new_token(now: datetime | None = None) -> str:
    """A unique, readable intent token: the UTC time to the microsecond."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")


def promote_patch(token: str, *, full: bool) -> dict[str, Any]:
    return {"metadata": {"annotations": {PROMOTE_ANNOTATION: promote_value(token, full=full)}}}


def abort_patch(token: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {ABORT_ANNOTATION: token}}}


def pause_patch(paused: bool) -> dict[str, Any]:
    return {"spec": {"rollout": {"paused": paused}}}


@dataclass
class _KubeRouters:
    """The real API: CustomObjectsApi on the current kubeconfig (merge patches)."""

    api: Any

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body))


def _connect(context: str | None) -> tuple[RouterAPI, str]:
    """The API and the kubeconfig context's namespace (like kubectl)."""
    from kubernetes import client, config
    from kubernetes.config import ConfigException

    try:
        config.load_kube_config(context=context)  # type: ignore[no-untyped-call]
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, FileNotFoundError) as exc:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException:
            raise CtlError(f"no Kubernetes credentials (set KUBECONFIG): {exc}") from None
        namespace = "default"
    return _KubeRouters(client.CustomObjectsApi()), namespace


def connect(args: argparse.Namespace) -> tuple[RouterAPI, str]:
    api, default_ns = _connect(getattr(args, "context", None))
    return api, args.namespace or default_ns


def _call(what: str, namespace: str, name: str, fn: Any, *a: Any) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        return dict(fn(*a))
    except ApiException as exc:
        if exc.status == 404:
            raise CtlError(f"FederatedRouter {namespace}/{name} not found") from None
        if exc.status == 403:
            raise CtlError(
                f"not allowed to {what} FederatedRouter {namespace}/{name}: {exc.reason}"
            ) from None
        raise CtlError(
            f"{what} FederatedRouter {namespace}/{name} failed: {exc.status} {exc.reason}"
        ) from None


def _patch(args: argparse.Namespace, body: dict[str, Any], done: str) -> int:
    api, namespace = connect(args)
    obj = _call("patch", namespace, args.name, api.patch, namespace, args.name, body)
    print(f"federatedrouter {namespace}/{args.name} {done}")
    if (((obj.get("spec") or {}).get("rollout") or {}).get("paused")) and "promote" in done:
        print(
            "note: spec.rollout.paused is true; run `fdp-operator resume NAME` to continue", file=sys.stderr
        )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    token = new_token()
    what = "full promotion" if args.full else "promotion"
    return _patch(args, promote_patch(token, full=args.full), f"{what} requested (token {token})")


def cmd_abort(args: argparse.Namespace) -> int:
    token = new_token()
    return _patch(args, abort_patch(token), f"abort requested (token {token})")


def cmd_pause(args: argparse.Namespace) -> int:
    return _patch(args, pause_patch(True), "paused (spec.rollout.paused=true)")


def cmd_resume(args: argparse.Namespace) -> int:
    return _patch(args, pause_patch(False), "resumed (spec.rollout.paused=false)")


def describe(obj: dict[str, Any]) -> str:
    """Human summary of a FederatedRouter's rollout (what `status NAME` prints)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ro = status.get("rollout") or {}
    spec_ro = (obj.get("spec") or {}).get("rollout") or {}
    lines = [
        f"Name:        {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"Strategy:    {ro.get('strategy') or spec_ro.get('strategy', 'RollingUpdate')}",
        f"Phase:       {ro.get('phase', 'Unknown')}",
        f"Stable:      {ro.get('stableRevision', '-')}",
        f"Current:     {ro.get('currentRevision', '-')}",
    ]
    if ro.get("activeColor"):
        lines.append(f"Active:      {ro['activeColor']}  (preview: {ro.get('previewColor') or '-'})")
    if ro.get("currentStepIndex") is not None or ro.get("canaryWeight") is not None:
        steps = len(spec_ro.get("steps") or [])
        lines.append(
            f"Step:        {ro.get('currentStepIndex', '-')}/{steps}  weight {ro.get('canaryWeight', 0)}%"
        )
    if ro.get("pauseReason"):
        lines.append(f"Paused:      {ro['pauseReason']}")
    gen, observed = meta.get("generation"), status.get("observedGeneration")
    lines.append(f"Generation:  {gen} (observed {observed})")
    lines.append(f"Replicas:    {status.get('availableReplicas', 0)}/{status.get('replicas', 0)} available")
    if ro.get("message"):
        lines.append(f"Message:     {ro['message']}")
    lines.append("Conditions:")
    for c in status.get("conditions") or []:
        head = f"  {c.get('type', ''):<12} {c.get('status', ''):<6}"
        lines.append(f"{head} {c.get('reason', '')}: {c.get('message', '')}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    api, namespace = connect(args)
    obj = _call("get", namespace, args.name, api.get, namespace, args.name)
    if args.output == "json":
        print(json.dumps({"metadata": obj.get("metadata", {}), "status": obj.get("status", {})}, indent=2))
    else:
        print(describe(obj))
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CtlError as exc:
            print(f"fdp-operator {getattr(args, 'command', '') or ''}: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: Any) -> None:
    """Add promote/abort/pause/resume/status to the `fdp-operator` command line."""

    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", metavar="NAME", help="the FederatedRouter")
        p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        p.add_argument("--context", help="kubeconfig context to use")
        p.set_defaults(func=_guard(func))
        return p

    promote = add(
        "promote", "promote a rollout past its current pause (or all steps with --full)", cmd_promote
    )
    promote.add_argument("--full", action="store_true", help="skip every remaining canary step")
    add("abort", "abort the rollout in progress; the stable revision keeps serving", cmd_abort)
    add("pause", "pause the rollout (spec.rollout.paused=true)", cmd_pause)
    add("resume", "resume a paused rollout (spec.rollout.paused=false)", cmd_resume)
    status = add("status", "show a FederatedRouter's rollout state and conditions", cmd_status)
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
