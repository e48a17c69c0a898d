"""Revision hashing: a revision is the stable hash of a rendered pod template.

Called by ``render/workloads.py`` (which stamps it on each Deployment as the
``fdp.io/revision`` annotation) and by the tests. Anything that should roll the pods (image,
config hash annotation, TLS serial annotation) is part of the template, so it changes the
revision; labels the engine adds per role (color, track) are excluded, so blue and green
running the same template share a revision.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

REVISION_ANNOTATION = "fdp.io/revision"
#: Pod labels that differ between roles of the same revision and so are not hashed.
ROLE_LABELS = ("fdp.io/color", "fdp.io/track")


def revision_of(pod_template: Mapping[str, Any]) -> str:
    """Stable short hash of a pod template (key order and role labels do not matter)."""
    template = copy.deepcopy(dict(pod_template))
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        for key in ROLE_LABELS:
            labels.pop(key, None)
    raw = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]
