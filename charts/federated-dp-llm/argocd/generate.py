"""Regenerate argocd-cm.yaml from health/*.lua (run after editing a health check).

Usage: python3 charts/federated-dp-llm/argocd/generate.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("FederatedRouter", "HospitalNode", "PrivacyPolicy")
HEADER = """\
# Argo CD health checks for the federated-dp-llm custom resources.
# Merge into argocd-cm (see README.md). Generated from health/*.lua by
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


def render() -> str:
    out = [HEADER.rstrip("\n")]
    for kind in KINDS:
        lua = (HERE / "health" / f"{kind}.lua").read_text()
        out.append(f"  resource.customizations.health.fdp.io_{kind}: |")
        out += ["    " + line if line else "" for line in lua.rstrip("\n").split("\n")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    (HERE / "argocd-cm.yaml").write_text(render())
