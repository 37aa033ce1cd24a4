"""Cascades on real outcome tables: a fixed-threshold sweep, learned escalation, an LLM as the router, the default
bandit policy, with simulated judges of several accuracies. Writes results/<env>.json and results/table.md.

    .venv/bin/python experiments/cascade/run.py            # both tables, seeds 0–4 (a few minutes on 2 cores)
    .venv/bin/python experiments/cascade/run.py --seeds 100,101,102 --out /tmp/tuning   # the tuning seeds

Every strategy is run through `bandit-router simulate`'s runner (`simulator.runner.simulate`) on the same streams
(common random numbers per seed: the same stream, and the same judge's score for the same answer, for every
strategy). The learned escalation's settings (the defaults of `EscalationParams`) were chosen with seeds 100–102
on the three setups, not on the seeds reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from simulator.environments import EnvSpec  # noqa: E402
from simulator.report import git_commit  # noqa: E402
from simulator.runner import Plan, simulate  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The judge's scores are k/9 (k = 0…9): these ten thresholds are every distinct fixed rule."""
JUDGES = (0.7, 0.8, 0.9)
JUDGE_PRICE = 0.15
"""USD per 1M tokens a judged answer costs (gpt-4o-mini's input price, prompt + 250 answer tokens)."""
ROUTER_ACCURACIES = (0.7, 0.9)

ROUTERBENCH = DATA / "routerbench_subset" / "routerbench_subset.csv.gz"
ROUTELLM = DATA / "routellm" / "routellm.csv.gz"
SETUPS: dict[str, dict[str, Any]] = {
    "routerbench": {  # RouterDC's split: warm start on the training part's labels, scored on the test part
        "env": EnvSpec.parse(f"dataset:{ROUTERBENCH}", split="split_routerdc", train_value="train", eval_value="test"),
        "chain": "mistral-7b-chat>Yi-34B-Chat>gpt-4-1106-preview",
        "cost_weights": (10.0, 50.0, 100.0, 200.0),
        "warmup": "full",
    },
    "routellm": {  # a seeded random half for the warm start, the other half scored
        "env": EnvSpec.parse(f"dataset:{ROUTELLM}", drop_flag="routellm_contaminated", split="random:0.5"),
        "chain": "mixtral-8x7b-instruct-v0.1>gpt-4-1106-preview",
        "cost_weights": (3.0, 8.0, 15.0, 30.0),
        "warmup": "full",
    },
    "routellm-online": {  # no warm start: every learner starts from nothing, exploration included
        "env": EnvSpec.parse(f"dataset:{ROUTELLM}", drop_flag="routellm_contaminated"),
        "chain": "mixtral-8x7b-instruct-v0.1>gpt-4-1106-preview",
        "cost_weights": (3.0, 8.0, 15.0, 30.0),
        "warmup": "none",
    },
}


def policies(chain: str) -> list[str]:
    out = []
    for judge in JUDGES:
        common = f"judge={judge},judge_price={JUDGE_PRICE},models={chain}"
        out += [f"cascade:threshold={t},{common}" for t in THRESHOLDS]
        out.append(f"learned-cascade:{common}")
    out += [f"llm-router:accuracy={a}" for a in ROUTER_ACCURACIES]
    out.append("default")
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% normal-approximation interval over seeds."""
    a = np.asarray(values, dtype=np.float64)
    half = 1.96 * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else 0.0
    return float(a.mean()), half


def run_setup(name: str, seeds: tuple[int, ...], workers: int) -> dict[str, Any]:
    setup = SETUPS[name]
    plan = Plan(
        env=setup["env"],
        policies=tuple(policies(setup["chain"])),
        cost_weights=setup["cost_weights"],
        seeds=seeds,
        warmup=setup["warmup"],
    )
    result = simulate(plan, workers=workers)
    rows: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in [*result.runs, *result.baselines]:
        cell = rows[(r.policy, r.cost_weight)]
        cell["reward"].append(r.mean_reward)
        cell["quality"].append(r.mean_quality)
        cell["cost_usd"].append(r.mean_cost_usd)
        cell["model_calls"].append(r.extra.get("calls_per_request", 1.0))
        cell["judge_calls"].append(r.extra.get("judge_calls_per_request", 1.0 if r.policy.startswith("llm") else 0.0))
        cell["escalations"].append(r.extra.get("escalations_per_request", 0.0))
    return {
        "env": name,
        "chain": setup["chain"],
        "seeds": list(seeds),
        "cost_weights": list(setup["cost_weights"]),
        "warmup": setup["warmup"],
        "n_steps": result.n_steps,
        "cells": [
            {"policy": p, "cost_weight": lam, **{k: mean_ci(v) for k, v in cell.items()}}
            for (p, lam), cell in rows.items()
        ],
    }


def _fmt(pair: list[float] | tuple[float, float], digits: int = 4) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table(data: dict[str, Any]) -> str:
    """Per λ and judge: the best threshold in hindsight, learned escalation, and the other strategies."""
    cells = {(c["policy"], c["cost_weight"]): c for c in data["cells"]}
    out = [f"### {data['env']}: chain {data['chain']}; {data['n_steps']} requests per run; seeds {data['seeds']}", ""]
    out.append(
        "| λ | judge acc. | strategy | reward | quality | cost/request (USD) | model calls/req | "
        "judge calls/req | learned − best threshold |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for lam in data["cost_weights"]:
        for judge in JUDGES:
            common = f"judge={judge},judge_price={JUDGE_PRICE},models={data['chain']}"
            sweep = [cells[(f"cascade:threshold={t},{common}", lam)] for t in THRESHOLDS]
            best = max(sweep, key=lambda c: c["reward"][0])
            learned = cells[(f"learned-cascade:{common}", lam)]
            gap = learned["reward"][0] - best["reward"][0]
            verdicts.append(gap >= 0)
            threshold = best["policy"].split("threshold=")[1].split(",")[0]
            for label, c, extra in (
                (f"best fixed threshold in hindsight ({threshold})", best, ""),
                ("learned escalation", learned, f"{gap:+.4f}"),
            ):
                out.append(
                    f"| {lam:g} | {judge} | {label} | {_fmt(c['reward'])} | {_fmt(c['quality'], 3)} | "
                    f"{_fmt(c['cost_usd'], 6)} | {c['model_calls'][0]:.2f} | {c['judge_calls'][0]:.2f} | {extra} |"
                )
        for policy in [f"llm-router:accuracy={a}" for a in ROUTER_ACCURACIES] + ["default", "oracle"]:
            c = cells[(policy, lam)]
            out.append(
                f"| {lam:g} | – | {policy} | {_fmt(c['reward'])} | {_fmt(c['quality'], 3)} | "
                f"{_fmt(c['cost_usd'], 6)} | {c['model_calls'][0]:.2f} | {c['judge_calls'][0]:.2f} | |"
            )
    out.append("")
    out.append(
        f"Learned escalation ≥ the best fixed threshold in hindsight in {sum(verdicts)} of {len(verdicts)} "
        "(λ, judge) cells."
    )
    return "\n".join(out)


def sweep_table(data: dict[str, Any]) -> str:
    """Every threshold of the sweep: reward, quality, cost, calls."""
    cells = {(c["policy"], c["cost_weight"]): c for c in data["cells"]}
    out = [f"### {data['env']}: the threshold sweep (reward; quality; cost/request; model calls/request)", ""]
    out.append("| λ | judge | " + " | ".join(f"t={t}" for t in THRESHOLDS) + " |")
    out.append("|---|---|" + "---|" * len(THRESHOLDS))
    for lam in data["cost_weights"]:
        for judge in JUDGES:
            common = f"judge={judge},judge_price={JUDGE_PRICE},models={data['chain']}"
            row = []
            for t in THRESHOLDS:
                c = cells[(f"cascade:threshold={t},{common}", lam)]
                row.append(
                    f"{c['reward'][0]:.3f}; {c['quality'][0]:.3f}; {c['cost_usd'][0]:.5f}; {c['model_calls'][0]:.2f}"
                )
            out.append(f"| {lam:g} | {judge} | " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--envs", default=",".join(SETUPS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()  # the running code's: `unknown` outside git (not an empty commit), `+dirty` with changes
    parts = []
    for name in args.envs.split(","):
        data = run_setup(name, seeds, args.workers)
        data["commit"] = commit
        (args.out / f"{name}.json").write_text(json.dumps(data, indent=1))
        parts += [table(data), "", sweep_table(data), ""]
        print(f"{name}: done", file=sys.stderr)
    header = f"Commit `{commit}`; seeds {list(seeds)}.\n"
    (args.out / "table.md").write_text(header + "\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
