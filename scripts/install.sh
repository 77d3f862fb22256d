#!/usr/bin/env bash
# Install adafuse and the built-in models into a virtual environment (default .venv, or $VENV).
# Usage: bash scripts/install.sh [EXTRAS]   (EXTRAS defaults to "all": zoo, server, eval, dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
venv="${VENV:-.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
wheelhouse="${ADAFUSE_WHEELHOUSE:-$HOME/.cache/adafuse/wheels}"
llama_version="0.3.36"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel

# llama.cpp builds with -march=native by default; on CPUs that report AMX the resulting library crashes in
# machines whose kernel does not grant AMX tiles (seen here). A portable AVX2 build avoids it. The wheel is
# built once (about 7 minutes on 2 cores) and kept in the wheelhouse, keyed by version.
if ! compgen -G "$wheelhouse/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
  echo "building llama-cpp-python $llama_version (portable AVX2, once) into $wheelhouse" >&2
  CMAKE_ARGS="${ADAFUSE_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/python" -m pip wheel -q --no-deps --no-cache-dir -w "$wheelhouse" "llama-cpp-python==$llama_version"
fi
"$venv/bin/python" -m pip install -q --find-links "$wheelhouse" -e ".[$extras]"
echo "installed into $venv" >&2
