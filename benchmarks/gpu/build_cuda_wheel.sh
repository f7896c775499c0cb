#!/usr/bin/env bash
# Runs HERE, on the CPU machine (no GPU, no CUDA install needed): build llama-cpp-python 0.3.36 with CUDA for
# the H200 (sm_90) in one command, so that the prepared GPU run (run.sh) installs it instead of compiling there.
#
#   bash benchmarks/gpu/build_cuda_wheel.sh          -> .device/cuda-wheel/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl
#   JOBS=2 (default: nproc)  KEEP_BUILD=1 (keep .device/cuda-build/)  NICE=19 (default 0)
#   bash benchmarks/gpu/build_cuda_wheel.sh --estimate   time a few representative CUDA files only (see below)
#   bash benchmarks/gpu/build_cuda_wheel.sh --carry      what a device call would carry with the wheel (64 MiB)
# Needs gcc/g++, cmake >= 3.21, ninja, unzip, readelf and PyPI (about 530 MB of NVIDIA wheels, kept in .device/).
#
# How: NVIDIA's compiler, headers and libraries come from PyPI as wheels (nvidia-cuda-nvcc, -crt, -cccl, -runtime,
# nvidia-nvvm, nvidia-cublas; 13.0.x, the CUDA of the device's driver 580) and are unpacked into .device/cuda-13.0
# (a toolkit root: bin/ include/ lib/ nvvm/). The one part not on PyPI, the driver's libcuda.so that ggml-cuda links
# for its virtual-memory pool, is replaced at link time by a stub generated from cuda.h (as NVIDIA's own
# lib/stubs/libcuda.so is); the real libcuda.so.1 of the driver is loaded there at run time.
# The wheel is tagged py3-none-linux_x86_64 (llama-cpp-python sets wheel.py-api = "py3": ctypes, no CPython ABI),
# so Python 3.11 here builds the wheel the device's Python 3.12 installs. sm_90 machine code only (90-real: no PTX),
# Release, stripped; CPU kernels for any x86-64 with AVX2 (GGML_NATIVE=OFF: the device's CPU is not this one).
# At run time the wheel needs libcudart.so.13 and libcublas(Lt).so.13 on the loader's path: on the device they are
# in the torch venv's nvidia/cu13/lib, which run.sh puts on LD_LIBRARY_PATH.
#
# ESTIMATE, made before the first build (--estimate repeats its sample):
#   What is compiled: 144 nvcc translation units for sm_90 with these flags (template instances: 22 mmq,
#   21 fattn-mma, 16 mmf, 12 fattn-tile, 4 fattn-vec; 69 other .cu files), plus 142 C/C++ files (ggml, ggml-cpu,
#   llama, common). Each sampled file compiled alone here (2-core AMD EPYC, other jobs on it), CPU seconds:
#   mmq q4_k 26, fattn-tile d128 28, fattn-mma 8x4 25, mmf ncols 8 14, fattn-vec f16 10, ggml-cuda.cu 10,
#   unary.cu 6. Scaled by the counts (the other .cu files at ~8 s): ~37 CPU-min of nvcc; with ~20 CPU-min of
#   C++ (this project's CPU build: 10-15 min on 2 cores), ~57 CPU-min in all.
#   -> on the device's 16 cores, if as fast as these: ~4-5 min (57/16 = 3.6 min; no file takes over ~30 s, so
#      16 jobs stay fed; plus configure and the link). That is about run.sh's 330 s build budget: too close to
#      count on, hence this prebuilt wheel. Here, on 2 idle cores: ~30 min.
# MEASURED, first build (2026-12-04, this 2-core AMD EPYC, NICE=19 with other jobs keeping the load at 4-6):
#   65 min of wall time; the compile steps took 2,808 CPU-s (47 CPU-min: the sum over ninja's finished
#   commands, read from its rusage), under the estimate. The slowest single file took 204 s of wall time at
#   ~2.75x contention (~75 CPU-s). So, on 16 cores as fast as these: 2,808 / 16 = ~3 min of compiling plus
#   configure and links, ~4 min (still an estimate: the device was not used). The wheel as built was 139 MiB;
#   trimmed (below) it is 22.3 MiB, libggml-cuda.so.0 38.7 MiB of it unpacked; with .device/wheels (20.8 MiB),
#   .device/models and .device/benchdata (6.1) and the working tree (1.2) a device call carries 50.4 of its 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DEV=$REPO/.device
CUDA=$DEV/cuda-13.0
DL=$DEV/download
OUTDIR=$DEV/cuda-wheel  # carried as is; run.sh copies the wheel into .device/built there
WORK=$DEV/cuda-build
JOBS=${JOBS:-$(nproc)}
CU_FILES=144  # nvcc translation units of ggml-cuda in this configuration (--estimate counts them again)
NICE=${NICE:-0}
LLAMA_VERSION=0.3.36
# CUDA 13.0 parts (13.0 Update 2's versions; nvidia-cublas 13.0.2.14 shipped with it): driver >= 580.
CUDA_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
             nvidia-cuda-runtime==13.0.96 nvidia-cuda-culibos==13.0.85 nvidia-cublas==13.0.2.14)
CMAKE_FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
 -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER=$CUDA/bin/nvcc -DCUDAToolkit_ROOT=$CUDA"
say() { echo "[$(date +%H:%M:%S)] $*"; }
started=$(date +%s)

toolkit() {
  if [ -x "$CUDA/bin/nvcc" ] && [ -e "$CUDA/lib/stubs/libcuda.so" ]; then return 0; fi
  say "CUDA 13.0 toolkit from PyPI wheels into $CUDA"
  mkdir -p "$DL/cuda"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --platform manylinux2010_x86_64 -d "$DL/cuda" "${CUDA_WHEELS[@]}" 2>&1 | grep -v "is ignored" || true
  local tmp
  tmp=$(mktemp -d)
  for spec in "${CUDA_WHEELS[@]}"; do
    local name=${spec%%==*} version=${spec##*==}
    unzip -q -o "$DL/cuda/${name//-/_}-${version}-"*.whl 'nvidia/*' -d "$tmp"
  done
  rm -rf "$CUDA" && mv "$tmp/nvidia/cu13" "$CUDA" && rm -rf "$tmp"
  # the wheels carry only the versioned names; the linker looks for the plain ones
  for lib in cudart cublas cublasLt; do ln -sf "lib$lib.so.13" "$CUDA/lib/lib$lib.so"; done
  # libcuda stub: every cu* entry point cuda.h declares (after its macros pick the _v2/_v3 names), empty bodies
  mkdir -p "$CUDA/lib/stubs"
  echo '#include <cuda.h>' | gcc -E -P -I "$CUDA/include" -x c - | grep -oE '\bcu[A-Za-z0-9_]+[[:space:]]*\(' \
    | tr -d '( \t' | sort -u | sed 's/.*/void &(void) {}/' > "$CUDA/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" "$CUDA/lib/stubs/libcuda_stub.c"
  "$CUDA/bin/nvcc" --version | tail -2
}

sdist() {  # a clean source tree in $WORK/src
  local tgz=$DL/llama_cpp_python-$LLAMA_VERSION.tar.gz
  [ -f "$tgz" ] || python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$DL" \
    2>&1 | grep -v "is ignored" || true
  rm -rf "$WORK/src" && mkdir -p "$WORK/src" && tar xzf "$tgz" -C "$WORK/src" --strip-components=1
}

estimate() {  # compile a few representative CUDA files alone, with the build's own flags, and time them
  local est=$WORK/estimate
  rm -rf "$est" && cmake -S "$WORK/src" -B "$est" -G Ninja $CMAKE_FLAGS > "$WORK/estimate-configure.log" 2>&1
  ninja -C "$est" -t commands | grep nvcc > "$WORK/estimate-commands.txt"
  say "$(wc -l < "$WORK/estimate-commands.txt") CUDA files in this configuration; timing a sample, one at a time"
  for f in template-instances/fattn-vec-instance-f16-f16.cu unary.cu template-instances/mmf-instance-ncols_8.cu \
           template-instances/fattn-tile-instance-dkq128-dv128.cu template-instances/fattn-mma-f16-instance-ncols1_8-ncols2_4.cu \
           template-instances/mmq-instance-q4_k.cu ggml-cuda.cu; do
    local cmd
    cmd=$(grep -F -- "ggml-cuda/$f " "$WORK/estimate-commands.txt" | head -1)
    ( cd "$est" && /usr/bin/time -f "$f: %e s wall, %U s user, %S s sys, %M KB" bash -c "$cmd" ) 2>&1 | tail -1
  done
}

build() {
  local log=$WORK/build.log
  mkdir -p "$OUTDIR" "$WORK/wheel"
  rm -f "$WORK"/wheel/*.whl
  say "building llama-cpp-python $LLAMA_VERSION with CUDA (sm_90), $JOBS jobs, nice $NICE; log: $log"
  # pip -v streams CMake's and ninja's output into the log; -C build-dir keeps .ninja_log (each file's time)
  PATH="$CUDA/bin:$PATH" CUDACXX="$CUDA/bin/nvcc" CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
    nice -n "$NICE" python -m pip wheel -v --no-deps --no-cache-dir -w "$WORK/wheel" \
    -C build-dir="$WORK/build" -C install.strip=true "$WORK/src" > "$log" 2>&1 &
  local pid=$! step cu
  while kill -0 $pid 2>/dev/null; do  # ninja prints "[step/steps] command" as each command ends (pip indents it)
    sleep 60
    step=$(grep -oE '^ *\[[0-9]+/[0-9]+\]' "$log" | tail -1 | tr -d ' ' || true)
    cu=$(grep -cE '^ *\[[0-9]+/[0-9]+\].* -c \S+\.cu( |$)' "$log" || true)
    say "still building: $cu of $CU_FILES CUDA files compiled, step ${step:-[configuring]}"
  done
  wait $pid || { say "build failed: the last lines of $log"; tail -40 "$log"; exit 1; }
  local whl
  whl=$(ls "$WORK"/wheel/llama_cpp_python-*.whl)
  say "built in $(( ($(date +%s) - started) / 60 )) min: $(basename "$whl") ($(du -h "$whl" | cut -f1) as built)"
  # A zip has no symlinks, so each library is in the wheel three times (libX.so, .so.0, .so.0.x.y), and llama.cpp's
  # own install rules add a second set under lib/ with headers and CMake files: 139 MiB. The loader needs only
  # what ctypes opens (llama_cpp/lib/libllama.so, libggml.so) and the sonames they name (libggml*.so.0).
  rm -f "$OUTDIR"/llama_cpp_python-*.whl
  python benchmarks/gpu/trim.py wheel "$whl" "$OUTDIR" --drop 'lib/*' --drop 'include/*' \
    --drop 'llama_cpp/lib/*.so.0.*' --drop 'llama_cpp/lib/libllama.so.0' --drop 'llama_cpp/lib/libggml-base.so' \
    --drop 'llama_cpp/lib/libggml-cpu.so' --drop 'llama_cpp/lib/libggml-cuda.so' > /dev/null
  whl=$OUTDIR/$(basename "$whl")
  say "trimmed: $whl ($(du -h "$whl" | cut -f1))"
  unzip -l "$whl" | grep -E '\.so' | awk '{printf "  %8.1f MiB  %s\n", $1 / 1048576, $4}'
  local lib
  lib=$(mktemp -d) && unzip -q -o "$whl" 'llama_cpp/lib/libggml-cuda.so.0' -d "$lib"
  echo "  libggml-cuda.so.0 needs: $(readelf -d "$lib/llama_cpp/lib/libggml-cuda.so.0" | grep NEEDED \
    | grep -oE '\[[^]]+\]' | tr -d '[]' | tr '\n' ' ')"
  echo "  debug sections: $(readelf -S "$lib/llama_cpp/lib/libggml-cuda.so.0" | grep -c '\.debug' || true) (0: stripped)"
  rm -rf "$lib"
  [ "${KEEP_BUILD:-0}" = 1 ] || rm -rf "$WORK/build" "$WORK/src"
  carry
}

carry() {  # a device call carries at most 64 MiB: the working tree, .device/wheels, models, benchdata and this wheel
  mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
  local tree wheels models whl total
  tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  wheels=$(du -sb "$DEV/wheels" 2>/dev/null | cut -f1 || true)
  models=$(du -sbc "$DEV/models" "$DEV/benchdata" 2>/dev/null | tail -1 | cut -f1 || true)
  whl=$(du -sb "$OUTDIR" | cut -f1)
  total=$((tree + ${wheels:-0} + ${models:-0} + whl))
  echo "  carry: working tree $(mib "$tree") + .device/wheels $(mib "${wheels:-0}") + .device/models and benchdata $(mib "${models:-0}")" \
       "+ .device/cuda-wheel $(mib "$whl") = $(mib "$total") of 64 MiB"
  [ -n "${wheels:-}" ] || echo "  (no .device/wheels yet: run benchmarks/gpu/prepare.sh, then this line again with --carry)"
  if [ "$total" -le $((64 * 1024 * 1024)) ]; then
    echo "  fits: run.sh build, then run.sh measure at once, each with carry [\".device/wheels\", \".device/models\"," \
         "\".device/cuda-wheel\", \".device/benchdata\"]"
  else
    echo "  too large for one call" >&2; return 1
  fi
}

if [ "${1:-}" = --carry ]; then carry; exit; fi
toolkit
sdist
if [ "${1:-}" = --estimate ]; then estimate; exit 0; fi
build
