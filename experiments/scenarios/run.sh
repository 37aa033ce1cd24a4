#!/usr/bin/env bash
# Experiment 3: every scenario on the default synthetic world. Run from the repository root:
#   experiments/scenarios/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for scenario in none drift new-model outage price-change traffic-shift delayed-feedback noisy-feedback; do
  args=()
  [ "$scenario" != none ] && args=(--scenario "$scenario")
  .venv/bin/bandit-router simulate --config experiments/scenarios/config.toml "${args[@]}" \
    --out "experiments/scenarios/results/$scenario" --quiet
  rm -f "experiments/scenarios/results/$scenario/curves.json"
done
.venv/bin/python experiments/scenarios/table.py > experiments/scenarios/results/table.md
