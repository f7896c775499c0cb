#!/usr/bin/env bash
# The prepared GPU run: runs THERE, on the lent GPU machine (an H200: torch 2.11+cu130, Python 3.12, no
# network), from the repository root, after benchmarks/gpu/prepare.sh ran HERE and its folders were carried.
#
#   bash benchmarks/gpu/run.sh build     install the carried wheels, build llama-cpp-python with CUDA (sm_90)
#                                        into .device/built, write the stand-in models meanwhile; the wheel also
#                                        comes back in <=15 MiB parts under $OUT (cat them to reuse it). With a
#                                        prebuilt wheel carried in .device/cuda-wheel (build_cuda_wheel.sh makes
#                                        it HERE, on the CPU machine) nothing is compiled: it is used as built
#   bash benchmarks/gpu/run.sh measure   install, then benchmarks/gpu/measure.py: generation (host and device
#                                        sampling), QLoRA DPO on both backends (1024/2048 x batch 1/2/4), the fp16
#                                        T4 path, a few suite items through transformers, the demo end to end;
#                                        JSON under $OUT (see measure.py)
#   bash benchmarks/gpu/run.sh all       both in one call (only if the build is known to be quick)
#
# Dry run, here on a CPU: `LITE_DELTA_GPU_DRY_RUN=1 bash benchmarks/gpu/run.sh` (or `run.sh measure --dry-run`)
# installs nothing, hides any GPU, and runs the same measurements at tiny shapes into $OUT (a new temporary
# folder when unset); every JSON file says "dry_run": true.
#
# Time: each phase is cut at its budget (BUILD_BUDGET_S, default 330; MEASURE_BUDGET_S, default 480, counted
# from the call's start), so the two calls fit a 15-minute lease with the machine's start (~1.5 min): `build`
# (with the prebuilt wheel: install and write the stand-ins, ~3 min) then `measure` at once, while the machine is
# warm; measure.py gives each step its own share (generate 90 s, train 180 s, fp16 60 s, suite 75 s, e2e 75 s)
# and writes as it goes. LITE_DELTA_GPU_STEPS=train (or any of generate,train,fp16,suite,e2e) reruns only those.
# Call `measure` right after `build`: the built wheel in .device/built stays only while the machine is warm.
# With .device/cuda-wheel carried nothing is compiled there: carry [".device/wheels", ".device/models",
# ".device/cuda-wheel", ".device/benchdata"] in both calls; the wheel finds libcudart/libcublas 13 through
# LD_LIBRARY_PATH below. `measure` alone works too, but then writes the stand-ins inside its step budgets.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
PHASE=all
DRY=${LITE_DELTA_GPU_DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    build|measure|all) PHASE=$arg ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: run.sh [build|measure|all] [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d -t lite-delta-gpu-XXXXXX)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
say() { echo "[$(date +%H:%M:%S)] $*"; }
started=$(date +%s)

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python}
  export CUDA_VISIBLE_DEVICES=""
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  say "dry run: $($PY --version 2>&1), no CUDA, no installs; results in $OUT"
  [ "$PHASE" = build ] && { say "dry run: nothing to build"; exit 0; }
  exec $PY benchmarks/gpu/measure.py --dry-run --out "$OUT" --work "${LITE_DELTA_GPU_WORK:-$OUT/.work}" \
    --budget "${MEASURE_BUDGET_S:-1270}" --steps "${LITE_DELTA_GPU_STEPS:-generate,train,fp16,suite,e2e}"
fi

PY=${PYTHON:-python3}
SITE=/tmp/lite-delta-site
BUILT=$REPO/.device/built
PREBUILT=$REPO/.device/cuda-wheel
mkdir -p "$BUILT"
# a wheel built elsewhere has no path to CUDA's runtime and cuBLAS there: the torch venv's nvidia/cu13/lib
# (the pip wheels' layout) and the toolkit's lib64
CUDA_LIBS=$($PY -c 'import glob, os, site
dirs = [d for base in site.getsitepackages() for d in glob.glob(os.path.join(base, "nvidia", "cu13", "lib"))]
print(":".join(dirs + [d for d in ("/usr/local/cuda/lib64",) if os.path.isdir(d)]))' 2>/dev/null)
export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
say "python $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
$PY -m pip show torch transformers accelerate peft triton safetensors tokenizers numpy fsspec pyarrow 2>/dev/null \
  | grep -E '^(Name|Version):' | paste - - | sed 's/Name: //; s/\tVersion: / /' | tr '\n' ';'; echo

install_wheels() {
  ls .device/wheels/*.whl >/dev/null 2>&1 || { say "no .device/wheels: carry it (prepare.sh)"; return 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .device/wheels/*.whl "$@" || return 1
  say "installed $(ls .device/wheels | wc -l) carried wheels into $SITE"
}

build() {
  local budget=${BUILD_BUDGET_S:-330}
  install_wheels || return 1
  # the stand-ins need no llama.cpp: write them on the side while nvcc has the cores
  $PY benchmarks/gpu/measure.py --prepare-only --out "$OUT" --work "$BUILT/work" > "$BUILT/prepare.log" 2>&1 &
  local prep=$!
  local prebuilt=0
  if ls "$BUILT"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "CUDA wheel already built: $(ls "$BUILT"/llama_cpp_python-*.whl)"
  elif ls "$PREBUILT"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    cp "$PREBUILT"/llama_cpp_python-*.whl "$BUILT/" && prebuilt=1
    say "prebuilt CUDA wheel carried, nothing to compile: $(ls "$BUILT"/llama_cpp_python-*.whl)"
  else
    local sdist src=/tmp/llama-cpp-src
    sdist=$(ls .device/src/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)
    [ -n "$sdist" ] || { say "no .device/src sdist: carry it (prepare.sh)"; return 1; }
    rm -rf "$src" && mkdir -p "$src" && tar xzf "$sdist" -C "$src" --strip-components=1
    say "building llama-cpp-python with CUDA (sm_90, $(nproc) jobs, at most ${budget}s)"
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) MAX_JOBS=$(nproc) \
      timeout "$budget" $PY -m pip wheel --no-deps --no-build-isolation --no-cache-dir -w "$BUILT" "$src" \
      > "$OUT/build.log" 2>&1
    local rc=$?
    [ $rc = 0 ] || { say "CUDA build failed or timed out (rc $rc): see build.log"; tail -30 "$OUT/build.log"; }
  fi
  local whl
  whl=$(ls "$BUILT"/llama_cpp_python-*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ] && [ "$PHASE" = build ] && [ $prebuilt = 0 ]; then  # (in `all`, measure.py's files fill the 8)
    say "wheel: $(basename "$whl") $(du -h "$whl" | cut -f1); its parts come back under \$OUT"
    split -b 15M -d "$whl" "$OUT/$(basename "$whl").part-"
  fi
  local left=$(( budget + 30 - ($(date +%s) - started) ))
  [ $left -gt 5 ] || left=5
  timeout "$left" tail --pid=$prep -f /dev/null; kill $prep 2>/dev/null
  tail -5 "$BUILT/prepare.log"
  [ -n "$whl" ]
}

measure() {
  install_wheels || return 1
  local whl
  whl=$(ls "$BUILT"/llama_cpp_python-*.whl "$PREBUILT"/llama_cpp_python-*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$whl" \
      && say "installed $(basename "$whl"): $($PY -c 'import llama_cpp
print("loads, GPU offload", llama_cpp.llama_supports_gpu_offload())' 2>&1 | tail -1)"
  else
    say "no CUDA llama-cpp-python wheel in .device/built or .device/cuda-wheel (machine not warm since build?):" \
        "generation and e2e will fail"
  fi
  local budget=${MEASURE_BUDGET_S:-480}
  local left=$(( budget - ($(date +%s) - started) ))
  $PY benchmarks/gpu/measure.py --out "$OUT" --work "$BUILT/work" --budget "$left" \
    --steps "${LITE_DELTA_GPU_STEPS:-generate,train,fp16,suite,e2e}"
}

case "$PHASE" in
  build) build ;;
  measure) measure ;;
  all) build && measure ;;
esac
rc=$?
say "phase $PHASE finished (rc $rc) in $(( $(date +%s) - started )) s; results in $OUT"
exit $rc
