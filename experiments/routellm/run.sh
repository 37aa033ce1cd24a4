#!/usr/bin/env bash
# Experiment 1: RouteLLM (GPT-4-1106 vs Mixtral-8x7B) on MMLU, GSM8K, MT-Bench. Run from the repository root:
#   experiments/routellm/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for name in gsm8k mt_bench mmlu_defaults mmlu_tuned; do
  .venv/bin/bandit-router simulate --config "experiments/routellm/$name.toml" --out "experiments/routellm/results/$name" --quiet
  rm -f "experiments/routellm/results/$name/curves.json"
done
.venv/bin/python experiments/routellm/table.py > experiments/routellm/results/table.md
