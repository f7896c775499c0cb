#!/usr/bin/env bash
# Build a second llama-cpp-python 0.3.36 with a chosen CPU kernel set, into an ignored folder, once.
# The demo-robustness grid runs the demo under each build (PYTHONPATH puts this one first), because
# llama.cpp's kernels differ by CPU (BRIEF §10) and so do the sampled teacher answers.
#
#   bash benchmarks/demo_robustness/build_llama.sh avx      # AVX, no AVX2/FMA (runs on any x86-64 with AVX)
#   bash benchmarks/demo_robustness/build_llama.sh avx2     # AVX2 + FMA + F16C, no AVX-512
#   bash benchmarks/demo_robustness/build_llama.sh avx512   # needs a CPU with AVX-512 to *run*
#
# Output: .bench/llama-<name>/ (importable llama_cpp; ~10-15 min to build on 2 cores).
set -euo pipefail
name="${1:?usage: build_llama.sh avx|avx2|avx512}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.bench/llama-$name"
common="-DGGML_NATIVE=OFF -DGGML_F16C=ON"
case "$name" in
  avx)    flags="$common -DGGML_AVX=ON -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_AVX512=OFF" ;;
  avx2)   flags="$common -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_AVX512=OFF" ;;
  avx512) flags="$common -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_AVX512=ON" ;;
  *) echo "unknown kernel set: $name (avx, avx2 or avx512)" >&2; exit 2 ;;
esac
if [ -f "$dest/.built" ]; then echo "already built: $dest"; exit 0; fi
rm -rf "$dest"; mkdir -p "$dest"
CMAKE_ARGS="$flags" pip install --no-deps --no-cache-dir --no-binary llama-cpp-python \
  --target "$dest" "llama-cpp-python==0.3.36"
echo "$flags" > "$dest/.built"
echo "built $dest with: $flags"
