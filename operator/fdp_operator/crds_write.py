"""Writes the CRDs that ``crds.py`` builds: ``crds/``, the Helm chart's copy, docs/crd-reference.md.

Run as ``python -m fdp_operator.crds --write`` (``crds.py`` hands over to ``main`` here) or
``python -m fdp_operator.crds_write --write``; without ``--write`` it prints the YAML. The only
file I/O of the CRD code: ``crds.py`` stays pure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fdp_operator.crds import all_crds, file_name, reference, to_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIRS = (REPO / "crds", REPO / "charts" / "federated-dp-llm" / "crds")
REFERENCE = REPO / "docs" / "crd-reference.md"


def main() -> int:
    parser = argparse.ArgumentParser(description="print or write the fdp.io CRDs")
    parser.add_argument("--write", action="store_true", help="write crds/, the chart's crds/ and the docs")
    args = parser.parse_args()
    if args.write:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(reference(), encoding="utf-8")
    for crd in all_crds():
        if args.write:
            for d in CRD_DIRS:
                d.mkdir(parents=True, exist_ok=True)
                (d / file_name(crd)).write_text(to_yaml(crd), encoding="utf-8")
        else:
            print("---\n" + to_yaml(crd), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
