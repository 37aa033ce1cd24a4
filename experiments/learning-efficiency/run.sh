#!/usr/bin/env bash
# Learning efficiency from scratch: the default policy against every other learning policy and a context-free
# Thompson baseline. Run from a clean checkout (results record the commit), from the repository root:
#   experiments/learning-efficiency/run.sh            (about 25 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
for name in routerbench_test routerbench_full synthetic gsm8k mmlu; do
  .venv/bin/bandit-router simulate --config "experiments/learning-efficiency/$name.toml" \
    --out "experiments/learning-efficiency/results/$name" --quiet
  rm -f "experiments/learning-efficiency/results/$name/curves.json"
done
.venv/bin/python experiments/learning-efficiency/table.py > experiments/learning-efficiency/results/table.md
