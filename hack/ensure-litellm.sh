#!/usr/bin/env bash
# LiteLLM proxy, the third-party OpenAI-compatible gateway the router's tests use as a hospital
# node (tests/unit/router/test_openai_litellm.py, issue 14). It lives in its own virtualenv,
# cached outside the repository like the Kubernetes binaries: its proxy extras pin packages
# (rich<14, ...) that clash with the project's, and the tests run it as a subprocess anyway.
# Prints the virtualenv's directory. Idempotent: a finished install is reused.
set -euo pipefail
VERSION=1.108.7   # 1.107.0 was a compromised release: never that one
ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
DIR="$ROOT/litellm-$VERSION"
if [[ -f "$DIR/.complete" ]]; then
  echo "$DIR"
  exit 0
fi
PY="${PY:-python3}"
echo "[deps] installing LiteLLM proxy $VERSION into $DIR (once; about a minute)" >&2
rm -rf "$DIR"
mkdir -p "$ROOT"
"$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "litellm[proxy]==$VERSION"
LITELLM_LOCAL_MODEL_COST_MAP=True "$DIR/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null
touch "$DIR/.complete"
echo "$DIR"
