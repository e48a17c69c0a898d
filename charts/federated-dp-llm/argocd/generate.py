"""Regenerate argocd-cm.yaml from health/*.lua (run after editing a health check).

Argo CD runs each kind's check as one self-contained script, so the shared start
(health/_prelude.lua: `hs`, `condition`, `msg`, `not_observed`) is written once and put in
front of each kind's body here; `script(kind)` is what Argo CD gets and what the tests run.

Usage: python3 charts/federated-dp-llm/argocd/generate.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("FederatedRouter", "HospitalNode", "PrivacyPolicy")
HEADER = """\
# Argo CD health checks for the federated-dp-llm custom resources.
# Merge into argocd-cm (see README.md). Generated from health/_prelude.lua + health/<Kind>.lua by
#   python3 charts/federated-dp-llm/argocd/generate.py
# tests/unit/gitops/test_argocd_health.py checks it matches the .lua files.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def script(kind: str) -> str:
    """The complete check for one kind: its header comment, the prelude, its body."""
    lines = (HERE / "health" / f"{kind}.lua").read_text().split("\n")
    n = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    prelude = (HERE / "health" / "_prelude.lua").read_text()
    return "\n".join(lines[:n]) + "\n" + prelude + "\n".join(lines[n:])


def render() -> str:
    out = [HEADER.rstrip("\n")]
    for kind in KINDS:
        lua = script(kind)
        out.append(f"  resource.customizations.health.fdp.io_{kind}: |")
        out += ["    " + line if line else "" for line in lua.rstrip("\n").split("\n")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    (HERE / "argocd-cm.yaml").write_text(render())
