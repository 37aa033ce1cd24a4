#!/usr/bin/env bash
# Budgets experiment: spend targets on the RouterBench subset and on a synthetic world with a traffic shift.
# Run from anywhere; writes experiments/budgets/results/ (runs.json, table.md, <world>.png). ~2 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKERS="${WORKERS:-2}" .venv/bin/python experiments/budgets/run.py
