#!/usr/bin/env bash
# System packages the tests need that pip cannot provide: a PostgreSQL server (the ledger's
# multi-replica backend is tested against a real one). Installs it with apt when missing and
# we are root (CI is); otherwise says exactly what to install.
set -euo pipefail
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null; }
if ! have_pg; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[deps] installing PostgreSQL server (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
  else
    echo "[deps] PostgreSQL server binaries not found: install 'postgresql' (Debian/Ubuntu) and retry" >&2
    exit 1
  fi
fi
command -v go >/dev/null || { echo "[deps] Go >= 1.26 is required to build the local cluster" >&2; exit 1; }
echo "[deps] ok: PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | tail -1), $(go version | awk '{print $3}')" >&2
