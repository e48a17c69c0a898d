"""User intents as annotations: promote (one step or full) and abort.

Written by ``fdp-operator promote/abort`` (ctl.py) or by a GitOps user in Git; read by
``render/workloads.py``. Intents never live in status. Each value is an opaque token (the
ctl writes a UTC timestamp); the engine records the last token it acted on in
``status.rollout.handledPromote`` / ``handledAbort``, so a token acts exactly once, even
if the annotation stays in Git forever or the operator restarts in between.

``fdp.io/promote``: ``<token>`` promotes past the current pause (one step); ``full:<token>``
skips every remaining step. ``fdp.io/abort``: ``<token>`` aborts the rollout in progress.
Pause and resume are ``spec.rollout.paused``.
"""

from __future__ import annotations

from collections.abc import Mapping

from fdp_operator.rollout.types import Intents

PROMOTE_ANNOTATION = "fdp.io/promote"
ABORT_ANNOTATION = "fdp.io/abort"
FULL_PREFIX = "full:"


def parse(annotations: Mapping[str, str]) -> Intents:
    promote = annotations.get(PROMOTE_ANNOTATION) or None
    abort = annotations.get(ABORT_ANNOTATION) or None
    return Intents(
        promote=promote,
        promote_full=bool(promote and promote.startswith(FULL_PREFIX)),
        abort=abort,
    )


def promote_value(token: str, *, full: bool) -> str:
    return f"{FULL_PREFIX}{token}" if full else token
