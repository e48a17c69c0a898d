"""Draw docs/img/architecture.png (the README's picture). Run: .venv/bin/python hack/draw_architecture.py"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "architecture.png"

BOXES = {
    # name: (x, y, w, h, colour, text)
    "git": (
        0.2,
        8.6,
        3.2,
        1.0,
        "#e8eef7",
        "kubectl apply / Argo CD / Flux\nHospitalNode · PrivacyPolicy · FederatedRouter",
    ),
    "api": (4.4, 8.6, 2.6, 1.0, "#dfe9f5", "kube-apiserver\n(CRDs + CEL validation)"),
    "op": (
        8.0,
        8.6,
        3.6,
        1.0,
        "#d7ecd9",
        "fdp-operator (kopf)\nrender(spec) → objects · probe nodes · status",
    ),
    "objs": (
        4.4,
        6.3,
        7.2,
        1.5,
        "#f3f0e0",
        "ConfigMap router-config-<hash> · Secret <fr>-tls (CA, renewed)\n"
        "Deployments <fr>-blue/-green or -stable/-canary · Services (active, preview)\n"
        "HPA · PDB · NetworkPolicy · ServiceAccount",
    ),
    "client": (0.2, 3.7, 3.2, 1.1, "#e8eef7", "clinician apps\nOpenAI SDK / HTTP + JWT"),
    "router": (
        4.4,
        3.2,
        7.2,
        2.2,
        "#fbe3d6",
        "router pod (aiohttp)\nauth (JWT) → validate → reserve ε (ledger, atomic)\n"
        "→ balancer → backend call(s) (mTLS) → GNMax consensus\n→ commit ε → audit (hash chain) → response",
    ),
    "ledger": (
        0.2,
        0.6,
        3.2,
        1.3,
        "#ece2f4",
        "privacy ledger\nSQLite (WAL) / PostgreSQL\n+ encrypted audit trail",
    ),
    "nodes": (
        4.4,
        0.4,
        7.2,
        1.5,
        "#e2f0ef",
        "hospital LLM endpoints (OpenAI-compatible)\n"
        "cardiology · neurology · emergency  (vLLM, TGI, Ollama…)",
    ),
}
# (start, end, label): edge-to-edge points so no arrow crosses a box's text.
ARROWS = [
    ((3.45, 9.1), (4.35, 9.1), "apply"),
    ((7.05, 9.1), (7.95, 9.1), "watch"),
    ((9.8, 8.55), (9.8, 7.85), "server-side apply"),
    ((3.45, 4.25), (4.35, 4.25), "HTTPS"),
    ((6.2, 6.25), (6.2, 5.45), "config + TLS"),
    ((4.35, 3.5), (3.45, 1.5), "reserve/commit"),
    ((8.0, 3.15), (8.0, 1.95), "fan-out"),
]


def main() -> None:
    fig, ax = plt.subplots(figsize=(12, 8.2))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 10)
    ax.axis("off")
    for x, y, w, h, colour, text in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9.5)
    for (x1, y1), (x2, y2), label in ARROWS:
        ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=14, color="#333"))
        ax.text((x1 + x2) / 2 + 0.08, (y1 + y2) / 2 + 0.1, label, fontsize=8.5, color="#225", ha="left")
    ax.set_title("federated-dp-llm: operator (control plane) and privacy-preserving router (data plane)")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
