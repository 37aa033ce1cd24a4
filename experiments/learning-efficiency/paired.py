"""A policy at two commits, seed by seed, on one experiment set: is a change of the reported means seed noise?

    .venv/bin/python experiments/learning-efficiency/paired.py --base 1b971f7c --seeds 25 \
        experiments/learning-efficiency/routerbench_test.toml \
        > experiments/learning-efficiency/results/prior-fix-paired.md

Runs `bandit-router simulate` once per seed (seeds 0 … N − 1, every λ of the set's config, the one policy) with
this checkout's `bandit_router/` and again with the base commit's (`git archive` into a temporary folder; the
simulator, the data and the config from this checkout), so both see the same streams (common random numbers).
Per λ: the mean regret per request of each, and their difference seed by seed as mean ± standard error over
seeds (paired), with the two-sided p-value of the paired t-test and how many seeds are worse; for the first five
seeds (the experiment's) and for all.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from simulator.report import git_commit  # noqa: E402

FIELDS = {"whole": "regret_per_request", "second half": "regret_per_request_second_half"}


def run(source: Path, config: str, policy: str, seed: int, out: Path) -> dict[float, dict[str, float]]:
    """Per λ, the policy's regret per request (whole, second half) on one seed, with `source`'s bandit_router."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(source), str(ROOT)]))}
    command = [
        str(Path(sys.executable).parent / "bandit-router"), "simulate", "--config", config, "--policies", policy,
        "--seeds", "1", "--first-seed", str(seed), "--out", str(out), "--quiet",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return {
        float(r["cost_weight"]): {name: float(r[key]) for name, key in FIELDS.items()}
        for r in summary["results"]
        if r["policy"] == policy
    }


def paired_row(new: np.ndarray, old: np.ndarray) -> str:
    diff = new - old
    se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    p = float(2 * stats.t.sf(abs(diff.mean() / se), len(diff) - 1)) if se > 0 else float("nan")
    return (
        f"{old.mean():+.4f} | {new.mean():+.4f} | {diff.mean():+.4f} ± {se:.4f} | {p:.2f} | "
        f"{int((diff > 0).sum())}/{len(diff)} | {old.max():+.3f} / {new.max():+.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an experiment config, e.g. routerbench_test.toml here")
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--policy", default="default")
    parser.add_argument("--seeds", type=int, default=25)
    args = parser.parse_args()
    commit = git_commit()  # before the runs: what they ran
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        archive = subprocess.run(
            ["git", "archive", args.base, "bandit_router"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        runs = {
            name: [run(source, args.config, args.policy, s, Path(tmp) / f"{name}-{s}") for s in range(args.seeds)]
            for name, source in (("new", ROOT), ("base", base))
        }
    print(f"# `{args.policy}` at `{commit}` against `{args.base}`, seed by seed\n")
    policy = "" if args.policy == "default" else f" --policy {args.policy}"
    print(
        f"Command: `.venv/bin/python experiments/learning-efficiency/paired.py --base {args.base} --seeds "
        f"{args.seeds}{policy} {args.config}`; seeds 0–{args.seeds - 1}, every λ of the config, one run per seed.\n"
    )
    print(
        "Regret per request against the best fixed model in hindsight. Difference = this commit − base, seed by "
        "seed (the same streams), mean ± standard error over seeds; p: two-sided paired t-test; worse: seeds "
        "where this commit's regret is higher; max: the worst seed's regret.\n"
    )
    first = range(min(5, args.seeds))
    subsets = (("seeds 0–4 (the experiment's)", first), (f"seeds 0–{args.seeds - 1}", range(args.seeds)))
    for label, seeds in subsets:
        print(f"## {label}\n")
        print("| λ | | base | this commit | difference | p | worse | max base / this |")
        print("|---|---|---|---|---|---|---|---|")
        for lam in sorted(runs["new"][0]):
            for name in FIELDS:
                new = np.array([runs["new"][s][lam][name] for s in seeds])
                old = np.array([runs["base"][s][lam][name] for s in seeds])
                print(f"| {lam:g} | {name} | {paired_row(new, old)} |")
        print()
    lams = sorted(runs["new"][0])
    print("## Per seed: base → this commit, whole stream / second half\n")
    print("| seed | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " |")
    print("|---|" + "---|" * len(lams))
    for s in range(args.seeds):
        cells = (
            " / ".join(f"{runs['base'][s][lam][name]:+.3f} → {runs['new'][s][lam][name]:+.3f}" for name in FIELDS)
            for lam in lams
        )
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
