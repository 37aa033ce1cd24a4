#!/usr/bin/env bash
# The gateway's failure drills against real processes on 127.0.0.1 (`bandit-router serve` in front of the fake
# upstream, benchmarks/fake_upstream.py, each its own process). Writes experiments/gateway-drills/results/g*.txt.
# One drill: experiments/gateway-drills/run.sh g2_disconnects
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p experiments/gateway-drills/results
for drill in "${@:-g1_upstream_faults g2_disconnects g3_concurrency g4_sigterm}"; do
    for name in $drill; do
        echo "== $name"
        { echo "# $name at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- bandit_router benchmarks experiments/gateway-drills ':!experiments/gateway-drills/results' || echo ' (modified)'), $(date -u +%FT%TZ)"
          PYTHONPATH=. timeout 900 .venv/bin/python "experiments/gateway-drills/$name.py"; } 2>&1 | tee "experiments/gateway-drills/results/$name.txt"
    done
done
