#!/usr/bin/env bash
# Operator's failure drills against real processes on 127.0.0.1 (a throwaway PostgreSQL from tools/pg_server.py).
# Run from anywhere, as root (drill 3 mounts tmpfs file systems); writes experiments/ops-drills/results/d*.txt.
# ~8 min on 2 cores. One drill: experiments/ops-drills/run.sh d4_catalog
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p experiments/ops-drills/results
for drill in "${@:-d1_replicas d2_backup d3_disk d4_catalog d5_upgrade}"; do
    for name in $drill; do
        echo "== $name"
        { echo "# $name at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- bandit_router || echo ' (modified)'), $(date -u +%FT%TZ)"
          .venv/bin/python "experiments/ops-drills/$name.py"; } 2>&1 | tee "experiments/ops-drills/results/$name.txt"
    done
done
