"""Interval coverage: is a 95% interval of `evaluate_log` a 95% interval?

Repeats, over many seeds, "log with a known logging policy in a synthetic world whose policy values are exact →
evaluate", and counts how often each estimator's interval covers the truth.

- World: `make_world(seed=1)` (4 models, 24 prompts over 4 tasks, Bernoulli quality, exact cost), λ = 100.
- Loggers: `vw-egreedy:epsilon=0.2` (well explored) and `vw-egreedy:epsilon=0.05` (poorly explored), each a real
  `Router` learning online (`simulate_log`, seed = the log's seed), logging its exact propensities.
- Log sizes: 300 and 3000 decisions.
- Candidates with an exact true value: `fixed:<model>` and `random` (V = Σ_j P(j) Σ_a π(a|j) E[r|j, a]);
  `rules` (one model per task, `coverage_rules.toml`); `logged` (the logger itself: its truth is the mean
  expected reward of its logged pmfs on the logged prompts, (1/n) Σ_t Σ_a μ_t(a|x_t) E[r|x_t, a]).
- Evaluation: `evaluate_log` with its defaults (the CLI's: all five estimators, 95% normal and bootstrap
  intervals with 200 replicates, DM's standard error from 100 refits, evaluation seed 0).

Per (logger, n, candidate, estimator, interval): coverage over the seeds with its binomial standard error, the
share of misses above and below the interval (the promotion rule reads the lower bound, whose one-sided miss
rate should be ≤ 2.5%), the mean width, the bias and RMSE of the point estimate, and the share of logs on which
the candidate carried an overlap warning (and the coverage on the logs without one).

Run: nice .venv/bin/python experiments/offline-evaluation/coverage.py [--seeds 200] [--jobs 2]
(writes results/coverage.{md,json} and results/coverage_runs.csv.gz next to this file)
"""

# ruff: noqa: E402  (BLAS threads are set before numpy is imported)
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import multiprocessing
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker: the workers are the parallelism

import numpy as np

from bandit_router.evaluation import Estimate, EvaluationConfig, evaluate_log
from bandit_router.evaluation.log import log_arrays
from bandit_router.evaluation.reward_models import RidgeRewardModel, fit_rewards
from bandit_router.evaluation.synthetic import SyntheticWorld, make_world, simulate_log
from bandit_router.router import Router
from simulator.report import git_commit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORLD_SEED = 1
LAMBDA = 100.0
LOGGERS = {"ε=0.2": "vw-egreedy:epsilon=0.2", "ε=0.05": "vw-egreedy:epsilon=0.05"}
SIZES = (300, 3000)
RULES = f"rules:file={HERE / 'coverage_rules.toml'}"
INTERVALS = ("normal", "bootstrap")
NOMINAL = 0.95


def exact_values(world: SyntheticWorld) -> dict[str, float]:
    """The exact value of every candidate that does not learn (all but `logged`)."""
    k = len(world.models)
    values = {"random": world.value(np.full_like(world.quality, 1.0 / k), LAMBDA).reward}
    for i, name in enumerate(world.model_names):
        pool = np.zeros_like(world.quality)
        pool[:, i] = 1.0
        values[f"fixed:{name}"] = world.value(pool, LAMBDA).reward
    values["rules"] = world.value(world.router_pmf(Router(world.models, policy=RULES), LAMBDA), LAMBDA).reward
    return values


def one_log(job: tuple[int, str, int]) -> list[dict[str, Any]]:
    """Log n decisions with `logger` (seed), evaluate every candidate, return one row per (candidate, estimator)."""
    seed, label, n = job
    world = make_world(seed=WORLD_SEED)
    truth = exact_values(world)
    sim = simulate_log(world, LOGGERS[label], n, seed=seed, cost_weight=LAMBDA)
    names = world.model_names
    reward = world.quality - LAMBDA * world.cost_usd
    logged_pmf = np.array([[dict(zip(r.decision.models, r.decision.pmf, strict=True))[m] for m in names]
                           for r in sim.records])
    truth["logged"] = float((logged_pmf * reward[sim.context_index]).sum(axis=1).mean())
    config = EvaluationConfig()  # the CLI's defaults
    evaluation = evaluate_log(sim.records, [RULES], models=world.models, config=config,
                              estimators=[e for e in config.estimators if e != "dm"])
    rows = []
    for record in evaluation.records:
        rows.append(_row(seed, label, n, record.candidate, record.estimator, truth, record.reward, record.warnings))
    # DM on the reward alone (evaluate_log would refit its 100 bootstrap models for quality and cost too)
    arrays = log_arrays(list(sim.records), {m.name: m for m in world.models}, feature_dim=config.feature_dim,
                        models=evaluation.models)
    rewards = arrays.rewards(None, config.latency_weight)
    fit = fit_rewards(arrays.features, arrays.actions, rewards, len(evaluation.models),
                      model=RidgeRewardModel(config.ridge), folds=config.folds, seed=config.seed,
                      n_bootstrap=config.dm_bootstrap)
    dm = config.estimator("dm")
    for candidate, replayed in evaluation.replays.items():
        est = dm.estimate(rewards=rewards, actions=arrays.actions, logged_probability=arrays.logged_probability,
                          target_pmf=replayed.target_pmf, reward_fit=fit)
        warnings = evaluation.record(candidate, "dr").warnings
        rows.append(_row(seed, label, n, candidate, "dm", truth, est, warnings))
    return rows


def _row(seed: int, label: str, n: int, candidate: str, estimator: str, truth: dict[str, float], est: Estimate,
         warnings: tuple[str, ...]) -> dict[str, Any]:
    name = "rules" if candidate == RULES else candidate
    boot = est.bootstrap_ci or (math.nan, math.nan)
    return {
        "seed": seed, "logger": label, "n": n, "candidate": name, "estimator": estimator, "truth": truth[name],
        "value": est.value, "normal_low": est.normal_ci[0], "normal_high": est.normal_ci[1],
        "bootstrap_low": boot[0], "bootstrap_high": boot[1], "ess": est.ess, "warned": bool(warnings),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Coverage, misses, width, bias, RMSE and warnings per (logger, n, candidate, estimator, interval)."""
    groups: dict[tuple[str, int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["logger"], row["n"], row["candidate"], row["estimator"])].append(row)
    out = []
    for (logger, n, candidate, estimator), group in groups.items():
        truth = np.array([r["truth"] for r in group])
        value = np.array([r["value"] for r in group])
        warned = np.array([r["warned"] for r in group])
        finite = np.isfinite(value)
        for interval in INTERVALS:
            low = np.array([r[f"{interval}_low"] for r in group])
            high = np.array([r[f"{interval}_high"] for r in group])
            ok = finite & np.isfinite(low) & np.isfinite(high)
            if not ok.any():
                continue
            covered = (low <= truth) & (truth <= high) & ok
            s = int(ok.sum())
            cover = float(covered[ok].mean())
            quiet = ok & ~warned
            low_cover, high_cover = wilson(int(covered.sum()), s)
            out.append({
                "logger": logger, "n": n, "candidate": candidate, "estimator": estimator, "interval": interval,
                "logs": s, "coverage": cover, "coverage_se": math.sqrt(cover * (1 - cover) / s),
                "coverage_low": low_cover, "coverage_high": high_cover,
                "miss_low": float((truth[ok] < low[ok]).mean()), "miss_high": float((truth[ok] > high[ok]).mean()),
                "mean_width": float((high - low)[ok].mean()),
                "bias": float((value - truth)[ok].mean()), "rmse": float(np.sqrt(((value - truth)[ok] ** 2).mean())),
                "warned_share": float(warned[ok].mean()),
                "coverage_unwarned": float(covered[quiet].mean()) if quiet.any() else None,
                "logs_unwarned": int(quiet.sum()),
                "mean_ess": float(np.mean([r["ess"] for r in group])),
            })
    order = {name: i for i, name in enumerate(LOGGERS)}
    return sorted(out, key=lambda r: (order[r["logger"]], r["n"], r["candidate"], r["estimator"], r["interval"]))


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% at the default z): unlike p ± z·√(p(1 − p)/n) it
    has a width at p = 0 or 1, and it is what a coverage is compared with the nominal level by."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one line per (logger, n, candidate, estimator, interval)."""
    lines = ["| logger | n | candidate | estimator | interval | coverage [95% Wilson] | miss below / above | "
             "mean width | bias | RMSE | mean ESS | warned | coverage unwarned (logs) |",
             "|---|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in summary:
        flag = " **✗**" if r["coverage_high"] < NOMINAL else (" **+**" if r["coverage_low"] > NOMINAL else "")
        unwarned = "–" if r["coverage_unwarned"] is None else f"{r['coverage_unwarned']:.3f} ({r['logs_unwarned']})"
        lines.append(
            f"| {r['logger']} | {r['n']} | {r['candidate']} | {r['estimator']} | {r['interval']} | "
            f"{r['coverage']:.3f} [{r['coverage_low']:.3f}, {r['coverage_high']:.3f}]{flag} | "
            f"{r['miss_low']:.3f} / {r['miss_high']:.3f} | "
            f"{r['mean_width']:.3f} | {r['bias']:+.4f} | {r['rmse']:.4f} | {r['mean_ess']:.0f} | "
            f"{100 * r['warned_share']:.0f}% | {unwarned} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="logs per (logger, size)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    commit = git_commit()  # now: the tree may be edited while the logs run
    jobs = [(seed, label, n) for seed in range(args.seeds) for label in LOGGERS for n in SIZES]
    rows: list[dict[str, Any]] = []
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for done, part in enumerate(pool.imap_unordered(one_log, jobs, chunksize=4), 1):
            rows.extend(part)
            if done % 50 == 0:
                print(f"{done}/{len(jobs)} logs, {time.perf_counter() - started:.0f} s", flush=True)
    rows.sort(key=lambda r: (r["logger"], r["n"], r["seed"], r["candidate"], r["estimator"]))
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "coverage_runs.csv.gz", "wt", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "question": "how often does each estimator's nominal 95% interval cover the exact value?",
        "command": f"nice .venv/bin/python experiments/offline-evaluation/coverage.py --seeds {args.seeds} "
                   f"--jobs {args.jobs}",
        "commit": commit, "world_seed": WORLD_SEED, "lambda": LAMBDA, "loggers": LOGGERS,
        "sizes": list(SIZES),
        "log_seeds": f"0..{args.seeds - 1} (simulate_log seed; evaluate_log seed 0)", "nominal": NOMINAL,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "coverage.json").write_text(json.dumps({**meta, "summary": summary}, indent=1) + "\n")
    text = (f"# Interval coverage ({args.seeds} logs per logger and size)\n\n"
            f"Command: `{meta['command']}`, commit {meta['commit']}, log seeds {meta['log_seeds']}, "
            f"{meta['seconds']:.0f} s.\n\n**✗**: below the nominal {NOMINAL} (the coverage's 95% Wilson interval "
            f"is below it); **+**: above it (wider than it needs to be, or a conditional truth: `logged`).\n\n"
            f"{table(summary)}\n")
    (args.out / "coverage.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
