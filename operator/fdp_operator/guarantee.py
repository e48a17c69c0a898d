"""The guarantee a PrivacyPolicy gives, for its status.

Uses the privacy core's ``fdp_router.privacy.policy.guarantee(privacy_cfg)`` (it owns the
accounting); ``local_guarantee`` states the same contract from the policy numbers alone
when the core is not installed. The core pulls in the DP libraries (dp-accounting, OpenDP,
SciPy: ~100 MiB resident), which the operator does not otherwise need, so the running
operator asks it in a short-lived child process (``guarantee_out_of_process``) and caches
the answer per policy content. Called by reconcile/policy.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from fdp_router.config import PrivacyConfig


@dataclass(frozen=True)
class GuaranteeView:
    text: str
    epsilon: float
    delta: float


def _window_words(cfg: PrivacyConfig) -> str:
    if cfg.window.kind == "lifetime" or cfg.window.period_seconds is None:
        return "over its lifetime (budgets never refresh)"
    secs = cfg.window.period_seconds
    if secs % 3600 == 0:
        return f"per {secs // 3600}h window"
    if secs % 60 == 0:
        return f"per {secs // 60}m window"
    return f"per {secs}s window"


def local_guarantee(cfg: PrivacyConfig) -> GuaranteeView:
    b = cfg.budgets
    text = (
        f"({b.per_user:g}, {cfg.delta:g})-DP per user {_window_words(cfg)}; "
        f"at most ε={b.per_department:g} per department and ε={b.per_hospital:g} per hospital; "
        f"≤ {cfg.max_epsilon_per_query:g} ε per query ({cfg.mechanism.value} noise). "
        "Per-user budgets assume users do not collude."
    )
    return GuaranteeView(text=text, epsilon=b.per_user, delta=cfg.delta)


def guarantee(cfg: PrivacyConfig) -> GuaranteeView:
    """The privacy core's statement when available, else the local one (in this process)."""
    try:
        from fdp_router.privacy.policy import guarantee as core_guarantee
    except ImportError:
        return local_guarantee(cfg)
    result: Any = core_guarantee(cfg)
    return GuaranteeView(
        text=str(result.text),
        epsilon=float(getattr(result, "epsilon", cfg.budgets.per_user)),
        delta=float(getattr(result, "delta", cfg.delta)),
    )


_CHILD = (
    "import json, sys\n"
    "from fdp_router.config import PrivacyConfig\n"
    "from fdp_operator.guarantee import guarantee\n"
    "v = guarantee(PrivacyConfig.model_validate_json(sys.stdin.read()))\n"
    "print(json.dumps([v.text, v.epsilon, v.delta]))\n"
)
CHILD_TIMEOUT_SECONDS = 60.0
_CACHE: dict[str, GuaranteeView] = {}
log = logging.getLogger(__name__)


async def guarantee_out_of_process(cfg: PrivacyConfig) -> GuaranteeView:
    """``guarantee(cfg)`` computed by a short-lived ``python -c`` child, cached by content.

    If the child fails or times out, the local statement is used (and not cached, so the
    next reconcile asks the privacy core again)."""
    key = cfg.model_dump_json()
    if key in _CACHE:
        return _CACHE[key]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(key.encode()), CHILD_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("privacy core guarantee timed out; using the local statement")
        return local_guarantee(cfg)
    if proc.returncode != 0:
        log.warning("privacy core guarantee failed (%s); using the local statement", err.decode()[-300:])
        return local_guarantee(cfg)
    text, eps, delta = json.loads(out)
    _CACHE[key] = GuaranteeView(str(text), float(eps), float(delta))
    return _CACHE[key]
