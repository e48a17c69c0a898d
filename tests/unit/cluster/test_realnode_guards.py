"""realnode.sh start refuses a second cluster while another is ACTIVE, like net-up does.

Without it `realnode.sh start B` next to an ACTIVE A started a second containerd/kubelet on
the shared bridge and host paths and overwrote ACTIVE with B, so `down A` then left A's
processes running and `down B` cleaned host paths B never recorded. Run against a scratch
cache with no binaries: a regression stops at "missing .../kubelet", never on the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HACK = Path(__file__).resolve().parents[3] / "hack" / "cluster"


def test_start_of_another_name_stops_at_the_active_check(tmp_path: Path) -> None:
    (tmp_path / "realnode").mkdir()
    (tmp_path / "realnode" / "ACTIVE").write_text("fdp\n")
    (tmp_path / "kubeconfig-other").write_text("apiVersion: v1\n")
    env = {**os.environ, "FDP_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(HACK / "realnode.sh"), "start", "other"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 1
    assert "real-node cluster 'fdp' is already up" in proc.stderr, proc.stderr
    assert (tmp_path / "realnode" / "ACTIVE").read_text() == "fdp\n"
    assert not (tmp_path / "realnode" / "other").exists()
