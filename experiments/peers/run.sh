#!/usr/bin/env bash
# Experiment 4: our LinUCB/LinTS against MABWiser's on the same runs. Run from the repository root:
#   experiments/peers/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for name in routerbench gsm8k; do
  .venv/bin/bandit-router simulate --config "experiments/peers/$name.toml" --out "experiments/peers/results/$name" \
    --quiet --no-plots
  rm -f "experiments/peers/results/$name/curves.json"
done
.venv/bin/python -m benchmarks.run --only bench_simulator --out experiments/peers/results/bench
.venv/bin/python experiments/peers/table.py > experiments/peers/results/table.md
