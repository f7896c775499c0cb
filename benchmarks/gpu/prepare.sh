#!/usr/bin/env bash
# Runs HERE, on the CPU machine: fetch and trim what the GPU run (benchmarks/gpu/run.sh) needs that the
# device lacks, into the ignored folder .device/ (see .gitignore), and report its size against the 64 MiB
# that one device call can carry.
#
#   .device/wheels/  Python 3.12 manylinux x86_64 wheels of benchmarks/gpu/device-wheels.txt (--no-deps);
#                    bitsandbytes without the CUDA 11/12/13.2, ROCm and XPU libraries (the device has CUDA 13.0),
#                    unsloth without its web "studio"
#   .device/src/     the llama-cpp-python 0.3.36 sdist without llama.cpp's tests, docs, example data, vocab
#                    models, git history and unused backends (built there with CUDA, sm_90)
#   .device/models/  tokenizer.gguf: a 1-layer random model carrying SmolLM2's BPE vocabulary and chat template,
#                    the tokenizer of every stand-in model run.sh writes there
#   .device/benchdata/  the GSM8K and MMLU rows of ../shared/benchdata ($LITE_DELTA_BENCHDATA), for the few suite
#                    items the run scores through the transformers engine
#   .device/cuda-wheel/  not made here: benchmarks/gpu/build_cuda_wheel.sh builds the CUDA wheel on this machine
#                    (~1 h on 2 cores); where it is, the plan below carries it and nothing is compiled there
#
# Never name `.device` itself in `carry`: run.sh keeps the CUDA wheel it builds in .device/built, which stays on
# a warm machine between calls only while no carried path replaces it. Usage: bash benchmarks/gpu/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${LITE_DELTA_DEVICE_DIR:-.device}
LIMIT=$((64 * 1024 * 1024))
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST/download" "$DEST/wheels" "$DEST/src" "$DEST/models" "$DEST/benchdata"

echo "== wheels for the device (Python 3.12, x86_64)"
python -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST/download" -r benchmarks/gpu/device-wheels.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
rm -f "$DEST"/wheels/*.whl
for whl in "$DEST"/download/*.whl; do
  case "$(basename "$whl")" in
    bitsandbytes-*) python benchmarks/gpu/trim.py wheel "$whl" "$DEST/wheels" \
                      --drop 'bitsandbytes/libbitsandbytes_cuda1[12]*' --drop 'bitsandbytes/libbitsandbytes_cuda13[!0]*' \
                      --drop 'bitsandbytes/libbitsandbytes_rocm*' --drop 'bitsandbytes/libbitsandbytes_xpu*' >/dev/null ;;
    unsloth-2*) python benchmarks/gpu/trim.py wheel "$whl" "$DEST/wheels" --drop 'studio/*' >/dev/null ;;
    *) cp "$whl" "$DEST/wheels/" ;;
  esac
done
# one version of each package: two would stop the whole install there
dupes=$(ls "$DEST/wheels" | sed -E 's/-[0-9].*//' | tr '[:upper:]-' '[:lower:]_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "two versions of: $dupes (empty $DEST/download and rerun)" >&2; exit 1; }

echo "== llama-cpp-python 0.3.36 source, trimmed"
[ -f "$DEST/download/llama_cpp_python-0.3.36.tar.gz" ] || python -m pip download -q --no-deps --no-binary :all: \
  llama-cpp-python==0.3.36 -d "$DEST/download" 2>&1 | grep -v "is ignored" || true
python benchmarks/gpu/trim.py sdist "$DEST/download/llama_cpp_python-0.3.36.tar.gz" \
  "$DEST/src/llama_cpp_python-0.3.36.tar.gz" >/dev/null

echo "== tokenizer carrier for the stand-in models"
python benchmarks/gpu/measure.py --tokenizer-carrier "$DEST/models/tokenizer.gguf"

echo "== suite rows (GSM8K, MMLU)"
BENCHDATA=${LITE_DELTA_BENCHDATA:-../shared/benchdata}
for task in gsm8k mmlu; do
  [ -d "$BENCHDATA/$task" ] || { echo "no $BENCHDATA/$task: set LITE_DELTA_BENCHDATA" >&2; exit 1; }
  rm -rf "${DEST:?}/benchdata/$task" && cp -r "$BENCHDATA/$task" "$DEST/benchdata/$task"
done

echo "== what travels"
size() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(size "$DEST/wheels"); src=$(size "$DEST/src"); models=$(( $(size "$DEST/models") + $(size "$DEST/benchdata") ))
cuda=0; ls "$DEST"/cuda-wheel/*.whl >/dev/null 2>&1 && cuda=$(size "$DEST/cuda-wheel")
printf '  %-28s %s\n' "working tree (always sent)" "$(mib "$tree")"
for whl in "$DEST"/wheels/*.whl; do printf '  %-28s %s\n' "  $(basename "$whl" | cut -d- -f1-2)" "$(mib "$(size "$whl")")"; done
printf '  %-28s %s\n' ".device/wheels" "$(mib "$wheels")" ".device/src" "$(mib "$src")" \
  ".device/models + benchdata" "$(mib "$models")" ".device/cuda-wheel" "$(mib "$cuda")"
build=$((tree + src + wheels)); measure=$((tree + wheels + models)); all=$((tree + src + wheels + models))
prebuilt=$((tree + wheels + models + cuda))
printf '  %-28s %s of 64 MiB\n' "everything in one call" "$(mib "$all")"
if [ "$cuda" -gt 0 ] && [ "$prebuilt" -le "$LIMIT" ]; then
  all=$prebuilt
  plan="prebuilt CUDA wheel, nothing compiled there: run.sh build, then run.sh measure at once, each with carry [\"$DEST/wheels\", \"$DEST/models\", \"$DEST/cuda-wheel\", \"$DEST/benchdata\"] ($(mib "$prebuilt"))"
elif [ "$all" -le "$LIMIT" ]; then
  plan="one call can carry everything: carry [\"$DEST/src\", \"$DEST/wheels\", \"$DEST/models\", \"$DEST/benchdata\"] in each call"
elif [ "$build" -le "$LIMIT" ] && [ "$measure" -le "$LIMIT" ]; then
  plan="two calls: build with carry [\"$DEST/src\", \"$DEST/wheels\"] ($(mib "$build")), then measure with carry [\"$DEST/wheels\", \"$DEST/models\", \"$DEST/benchdata\"] ($(mib "$measure"))"
else
  echo "too large: the build call needs $(mib "$build"), the measure call $(mib "$measure"); trim more" >&2
  exit 1
fi
echo "  plan: $plan"
python - "$DEST/manifest.json" "$tree" "$wheels" "$src" "$models" "$all" "$plan" <<'EOF'
import json, pathlib, sys
out, tree, wheels, src, models, total, plan = sys.argv[1:]
folder = pathlib.Path(out).parent
json.dump({"limit_bytes": 64 * 1024 * 1024, "working_tree_bytes": int(tree), "wheels_bytes": int(wheels),
           "src_bytes": int(src), "models_bytes": int(models), "total_bytes": int(total), "plan": plan,
           "wheels": sorted(p.name for p in (folder / "wheels").glob("*.whl"))},
          open(out, "w"), indent=2)
EOF
echo "done: $DEST/manifest.json"
