#!/usr/bin/env bash
# Build (once per machine) and print the path of a llama-cpp-python wheel that runs on this CPU.
#
# Why: the default build uses -march=native, and on CPUs with AMX the AMX matmul path segfaults
# on the first decode (see ../shared/ENVIRONMENT.md). pip's own wheel cache ignores CMAKE_ARGS
# and would happily reinstall a crashing wheel, so we build with --no-cache-dir into a directory
# keyed by version + flags, outside the clone, so repeated runs are fast and a new machine rebuilds.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
export CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF}"
KEY="$(printf '%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$("$PYTHON" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)"
CACHE_DIR="${TANDEM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/wheels}/llama-cpp-python-$VERSION-$KEY"

wheel="$(ls "$CACHE_DIR"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then
  echo "building llama-cpp-python $VERSION (~4 min on 2 cores; cached in $CACHE_DIR)" >&2
  tmp="$(mktemp -d)"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PYTHON" -m pip wheel --no-cache-dir --no-deps -w "$tmp" \
    "llama-cpp-python==$VERSION" >&2
  mkdir -p "$CACHE_DIR"
  mv "$tmp"/llama_cpp_python-*.whl "$CACHE_DIR"/
  rm -rf "$tmp"
  wheel="$(ls "$CACHE_DIR"/llama_cpp_python-*.whl | head -n1)"
fi
echo "$wheel"
