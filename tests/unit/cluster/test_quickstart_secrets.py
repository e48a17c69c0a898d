"""examples/quickstart/secrets.sh against a fake kubectl (a store of Secrets in a scratch dir):
the JWT key never appears in any command line (every local user can read /proc/PID/cmdline),
a second run changes nothing, and a missing node certificate makes the set anew instead of
leaving the network without it (the CA's key is not kept, so it cannot sign just that one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "quickstart" / "secrets.sh"
NODES = ["cardiology", "neurology", "emergency", "guidelines"]
ALL = ["quickstart-jwt", "quickstart-hospital-ca", *(f"{n}-llm-tls" for n in NODES)]

# argv goes to $LOG; `create secret` prints the name, then base64 of every --from-file and
# --cert file; `apply -f -` stores them as $STORE/NAME (a directory, one file per key).
FAKE_KUBECTL = r"""#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >> "$LOG"
args=("$@")
[[ "${args[0]}" == -n ]] && args=("${args[@]:2}")
case "${args[0]} ${args[1]:-}" in
  "get secret")
    name="${args[2]}"; [[ -d "$STORE/$name" ]] || exit 1
    if [[ "${args[*]}" == *jsonpath* ]]; then base64 -w0 < "$STORE/$name/ca.crt"; fi ;;
  "create secret")
    echo "${args[3]}"
    for a in "${args[@]}"; do
      case "$a" in
        --from-file=*) kv="${a#--from-file=}"; echo "${kv%%=*} $(base64 -w0 < "${kv#*=}")" ;;
        --cert=*) echo "tls.crt $(base64 -w0 < "${a#--cert=}")" ;;
      esac
    done ;;
  "label --local") cat ;;
  "apply -f")
    read -r name; mkdir -p "$STORE/$name"
    while read -r k v; do printf '%s' "$v" | base64 -d > "$STORE/$name/$k"; done ;;
  *) echo "fake kubectl: unexpected $*" >&2; exit 3 ;;
esac
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    (tmp_path / "store").mkdir()
    return {
        **os.environ,
        "KUBECTL": str(fake),
        "STORE": str(tmp_path / "store"),
        "LOG": str(tmp_path / "argv.log"),
    }


def _run(env: dict[str, str]) -> str:
    Path(env["LOG"]).write_text("")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "demo-ns"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return Path(env["LOG"]).read_text()


def test_jwt_key_never_in_a_command_line(env: dict[str, str]) -> None:
    argv = _run(env)
    store = Path(env["STORE"])
    assert sorted(p.name for p in store.iterdir()) == sorted(ALL)
    key = (store / "quickstart-jwt" / "secret").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key not in argv
    assert not re.search(r"[0-9a-f]{64}", argv)


def test_second_run_changes_nothing(env: dict[str, str]) -> None:
    _run(env)
    argv = _run(env)
    assert "apply" not in argv and "create" not in argv


def test_a_missing_node_certificate_makes_the_set_anew(env: dict[str, str]) -> None:
    _run(env)
    store = Path(env["STORE"])
    old_ca = (store / "quickstart-hospital-ca" / "ca.crt").read_bytes()
    shutil.rmtree(store / "neurology-llm-tls")
    argv = _run(env)
    assert (store / "neurology-llm-tls").is_dir()
    for n in NODES:
        assert f"create secret tls {n}-llm-tls" in argv
    new_ca = (store / "quickstart-hospital-ca" / "ca.crt").read_bytes()
    assert new_ca != old_ca
    # every node certificate now chains to the CA in the Secret
    for n in NODES:
        crt = store / f"{n}-llm-tls" / "tls.crt"
        ca = store / "quickstart-hospital-ca" / "ca.crt"
        ok = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca), str(crt)], capture_output=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
    assert "create secret generic quickstart-jwt" not in argv  # the key is kept


def test_files_in_the_work_dir_are_private() -> None:
    text = SCRIPT.read_text()
    assert text.index("umask 077") < text.index("mktemp -d")
    assert "--from-literal" not in text
