#!/usr/bin/env bash
# Experiment 2: the RouterBench subset (11 models), RouterDC's split. Run from the repository root:
#   experiments/routerbench/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for name in full scratch; do
  .venv/bin/bandit-router simulate --config "experiments/routerbench/$name.toml" \
    --out "experiments/routerbench/results/$name" --quiet
  rm -f "experiments/routerbench/results/$name/curves.json"
done
.venv/bin/python experiments/routerbench/table.py > experiments/routerbench/results/table.md
