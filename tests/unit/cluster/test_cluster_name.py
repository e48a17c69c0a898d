"""hack/cluster: a cluster NAME becomes $CACHE_ROOT/realnode/NAME, which a root `down` removes
with rm -rf, so the scripts refuse any NAME that is not one plain DNS label before doing anything.
Only the validator and the scripts' early exit run here: FDP_CACHE_DIR points at a scratch dir and
every hostile name must exit 2 with the scratch tree (and a decoy beside it) untouched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HACK = Path(__file__).resolve().parents[3] / "hack" / "cluster"
HOSTILE = ["..", "../..", "../../victim", "a/b", "/", "", "-x", "x-", "X", "a b", "a;b", "$(id)", "a" * 41]


def _check(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'source "$1"; check_cluster_name "$2"; echo ok', "_", str(HACK / "name.sh"), name],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("name", ["fdp", "fdp-real", "fdp-rp-12345", "a", "a" * 40, "0x"])
def test_plain_names_pass(name: str) -> None:
    proc = _check(name)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    proc = _check(name)
    assert proc.returncode == 2 and "ok" not in proc.stdout
    assert "invalid cluster name" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["down.sh", "../../victim"],
        ["realnode.sh", "down", "../../victim"],
        ["realnode.sh", "net-up", "../../victim"],
        ["load-images.sh", "../../victim", "img"],
    ],
)
def test_scripts_exit_before_touching_anything(tmp_path: Path, argv: list[str]) -> None:
    cache = tmp_path / "cache"
    (cache / "realnode").mkdir(parents=True)
    (cache / "realnode" / "ACTIVE").write_text("other\n")  # never the machine's real node
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("precious")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    # ACTIVE=other also keeps a regressed net-up/down away from the machine's node (they stop
    # at "another cluster is up" / only rm -rf $RN, here inside tmp_path).
    env = {**os.environ, "FDP_CACHE_DIR": str(cache), "FDP_REAL_NODES": "0"}
    proc = subprocess.run(
        ["bash", str(HACK / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid cluster name" in proc.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (victim / "file").read_text() == "precious"


def test_env_name_is_checked_too(tmp_path: Path) -> None:
    env = {**os.environ, "FDP_CACHE_DIR": str(tmp_path), "FDP_CLUSTER_NAME": ".."}
    proc = subprocess.run(
        ["bash", str(HACK / "down.sh")], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 2 and "invalid cluster name" in proc.stderr


def test_up_checks_the_name_before_building_or_net_up() -> None:
    # not run (a regression would build binaries and create a cluster): read in order instead
    text = (HACK / "up.sh").read_text()
    check = text.index('check_cluster_name "$NAME"')
    assert check < text.index('"$HERE/build.sh"') and check < text.index('realnode.sh" net-up')
