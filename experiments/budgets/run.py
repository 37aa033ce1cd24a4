"""Experiment: does the budget pacer hold a spend target, and what does it cost in quality?

For each world (the RouterBench subset, RouterDC's test split; the packaged synthetic world with a traffic shift at
half the run) and three spend targets (`spend_usd=<X>/<tenth of the run>`, one simulated second per step):

- paced: the `default` policy with the pacer (λ starts at 20 and is steered by the pacer);
- hard cap: the same spend target with `cost_step = 0` (λ frozen at 20; the guard rail routes to the cheapest
  model once a period's budget is spent);
- fixed λ: the same policy without a pacer on a grid of λ; afterwards ("hindsight") the quality at the target's spend
  is read off this frontier (linear interpolation between the two grid points around the target's spend).

- best fixed model within budget: the single model with the highest quality among those whose mean cost per
  request over the episode is at most the target (what a team would do without a router).

Targets are set from public prices only: the mean per-request cost of the cheapest model and of the best single
model (by quality) over the episode, c_lo + f·(c_hi − c_lo) for f = 0.1, 0.2, 0.3, 0.6.

Run from the repository root: `.venv/bin/python experiments/budgets/run.py` (writes experiments/budgets/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from simulator.budgets import SimulatedPacer, TargetPacers  # noqa: E402
from simulator.environments import EnvSpec  # noqa: E402
from simulator.report import git_commit  # noqa: E402
from simulator.runner import Plan, Workspace  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2)
STEPS = 3000
TENTH = STEPS // 10
START_LAMBDA = 20.0
GRID = (0.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
FRACTIONS = (0.1, 0.2, 0.3, 0.6)
POLICY = "default"
RB = str(ROOT.parent / "shared/data/routerbench_subset/routerbench_subset.csv.gz")
WORLDS: dict[str, dict[str, Any]] = {
    "routerbench": {
        "env": f"dataset:{RB}",
        "options": {"split": "split_routerdc", "train_value": "train", "eval_value": "test"},
        "scenarios": (),
        "warmup": "bandit",
    },
    "synthetic-shift": {
        "env": "synthetic:default",
        "options": {},
        "scenarios": ("traffic-shift:at=0.5",),
        "warmup": "none",
    },
}


@dataclass(frozen=True)
class Job:
    world: str
    kind: str  # "paced", "cap" or "fixed"
    seed: int
    lam: float
    target: str | None = None


class _Recording(TargetPacers):
    """A `TargetPacers` whose pacers record (step, λ, booked spend) at every step."""

    def __call__(self, models: Any, cost_weight: float) -> SimulatedPacer:
        pacer = super().__call__(models, cost_weight)
        pacer.trajectory = []
        _LAST.append(pacer)
        return pacer


_LAST: list[SimulatedPacer] = []
_SPACES: dict[str, Workspace] = {}


def _plan(world: str) -> Plan:
    w = WORLDS[world]
    return Plan(env=EnvSpec.parse(w["env"], **w["options"]), policies=(POLICY,), seeds=SEEDS,
                scenarios=w["scenarios"], steps=STEPS, warmup=w["warmup"])


def _workspace(world: str) -> Workspace:
    if world not in _SPACES:
        ws = Workspace(_plan(world))
        ws.prepare()
        _SPACES[world] = ws
    return _SPACES[world]


def run_job(job: Job) -> dict[str, Any]:
    pacers: TargetPacers | None = None
    if job.kind == "paced":
        pacers = _Recording((job.target,))  # type: ignore[arg-type]
    elif job.kind == "cap":
        pacers = _Recording((job.target,), settings=(("cost_step", 0.0),))  # type: ignore[arg-type]
    ws = _workspace(job.world)
    episode = ws.episode(job.seed)
    _LAST.clear()
    agent = ws.agent(POLICY)
    # a RouterAgent; one job at a time per process
    agent.pacer_factory = pacers  # type: ignore[attr-defined]
    trace = agent.run(episode, ws.env, job.lam, job.seed)
    cost = np.nan_to_num(np.where(trace.chosen >= 0, trace.cost_usd, 0.0))
    out: dict[str, Any] = {
        **job.__dict__,
        "quality": float(np.nanmean(trace.quality[trace.chosen >= 0])),
        "spend_per_step": float(cost.mean()),
        "tenths": [float(x) for x in cost[: TENTH * 10].reshape(10, TENTH).mean(axis=1)],
    }
    if _LAST and _LAST[0].trajectory is not None:
        traj = _LAST[0].trajectory
        out["lambda"] = [float(lam) if lam is not None else None for _, lam, _ in traj[::10]]
    out["cum_spend"] = [float(x) for x in np.cumsum(cost)[::10]]
    return out


def _targets(world: str) -> dict[str, float]:
    """Per-step spend targets from public prices: cheapest model's and best single model's mean cost."""
    ws = _workspace(world)
    costs, quality = [], []
    warnings.simplefilter("ignore", RuntimeWarning)  # a model that is never available has an empty mean
    for seed in SEEDS:
        ep = ws.episode(seed)
        costs.append(np.nanmean(np.where(ep.available, ep.cost_usd, np.nan), axis=0))
        quality.append(np.nanmean(np.where(ep.available, ep.quality, np.nan), axis=0))
    c, q = np.mean(costs, axis=0), np.mean(quality, axis=0)
    lo, hi = float(np.nanmin(c)), float(c[int(np.nanargmax(q))])
    return {f"f={f}": lo + f * (hi - lo) for f in FRACTIONS}


def _fixed_models(world: str) -> dict[int, list[tuple[str, float, float]]]:
    """Per seed: (model, mean cost per step, mean quality) of always answering with that model."""
    ws = _workspace(world)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for seed in SEEDS:
            ep = ws.episode(seed)
            cost = np.nanmean(np.where(ep.available, ep.cost_usd, np.nan), axis=0)
            quality = np.nanmean(np.where(ep.available, ep.quality, np.nan), axis=0)
            out[seed] = [
                (name, float(c), float(q))
                for name, c, q in zip(ep.model_names, cost, quality, strict=True)
                if np.isfinite(c) and np.isfinite(q)
            ]
    return out


def _best_fixed_within(models: list[list[Any]], rate: float) -> tuple[str, float]:
    """The single model with the highest quality among those whose mean cost per step is ≤ `rate`."""
    fits = [(q, name) for name, c, q in models if c <= rate]
    if not fits:
        return "–", float("nan")
    q, name = max(fits)
    return name, q


def _spend_target(rate: float) -> str:
    return f"spend_usd={rate * TENTH:.6g}/{TENTH}s"


def _interp_quality(fixed: list[dict[str, Any]], spend: float) -> float:
    pts = sorted((r["spend_per_step"], r["quality"]) for r in fixed)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if spend <= xs[0]:
        return ys[0]
    if spend >= xs[-1]:
        return max(ys)
    # the frontier: best quality at or below each spend (a fixed λ can be dominated by a cheaper one)
    best = np.maximum.accumulate(ys)
    return float(np.interp(spend, xs, best))


def main() -> None:
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    jobs: list[Job] = []
    targets: dict[str, dict[str, float]] = {}
    for world in WORLDS:
        targets[world] = _targets(world)
        for seed in SEEDS:
            jobs += [Job(world, "fixed", seed, lam) for lam in GRID]
            for rate in targets[world].values():
                jobs += [Job(world, kind, seed, START_LAMBDA, _spend_target(rate)) for kind in ("paced", "cap")]
    workers = int(os.environ.get("WORKERS", "2"))
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(run_job, jobs))
    commit = git_commit()
    fixed_models = {world: {str(seed): rows for seed, rows in _fixed_models(world).items()} for world in WORLDS}
    raw = {"commit": commit.strip(), "seeds": SEEDS, "steps": STEPS, "grid": GRID, "start_lambda": START_LAMBDA,
           "targets": targets, "fixed_models": fixed_models, "runs": results,
           "seconds": round(time.perf_counter() - started, 1)}
    raw = _compact(raw)
    (OUT / "runs.json").write_text(json.dumps(raw))
    table = summarize(raw)
    (OUT / "table.md").write_text(table)
    print(table)
    plot(raw)
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s")


def _text(raw: dict[str, Any], world: str, rate: float) -> str:
    """The spend target of `world` whose amount is closest to `rate` per step (robust to rounded JSON)."""
    texts = {r["target"] for r in raw["runs"] if r["world"] == world and r["kind"] == "paced"}
    return min(texts, key=lambda t: abs(float(t.split("=")[1].split("/")[0]) / TENTH - rate))


def _compact(raw: dict[str, Any]) -> dict[str, Any]:
    """What is committed: 6 significant digits; the spend curve only for the paced and hard-cap runs."""

    def rounded(x: Any) -> Any:
        if isinstance(x, float):
            return float(f"{x:.6g}")
        if isinstance(x, list | tuple):
            return [rounded(v) for v in x]
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        return x

    for r in raw["runs"]:
        if r["kind"] == "fixed":
            r.pop("cum_spend", None)
    return dict(rounded(raw))


def summarize(raw: dict[str, Any]) -> str:
    lines = [f"commit {raw['commit']}, seeds {list(raw['seeds'])}, {raw['steps']} steps, policy {POLICY}, "
             f"start λ {raw['start_lambda']}", ""]
    lines.append("| world | target (USD/step) | run | realized / target | worst tenth / target | tenths within ±15% "
                 "| quality | hindsight fixed-λ quality at target | paced − hindsight | hard cap quality |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for world, tgts in raw["targets"].items():
        for name, rate in tgts.items():
            target = _text(raw, world, rate)
            for seed in raw["seeds"]:
                runs = [r for r in raw["runs"] if r["world"] == world and r["seed"] == seed]
                fixed = [r for r in runs if r["kind"] == "fixed"]
                paced = next(r for r in runs if r["kind"] == "paced" and r["target"] == target)
                cap = next(r for r in runs if r["kind"] == "cap" and r["target"] == target)
                hindsight = _interp_quality(fixed, rate)
                tenths = np.array(paced["tenths"]) / rate
                worst = tenths[np.argmax(np.abs(tenths - 1))]
                within = int(np.sum(np.abs(tenths - 1) <= 0.15))
                lines.append(
                    f"| {world} | {name}: {rate:.6f} | seed {seed} | {paced['spend_per_step'] / rate:.3f} | "
                    f"{worst:.2f} | {within}/10 | {paced['quality']:.4f} | {hindsight:.4f} | "
                    f"{(paced['quality'] - hindsight) / hindsight:+.1%} | {cap['quality']:.4f} "
                    f"(spend {cap['spend_per_step'] / rate:.2f}×) |"
                )
    lines += ["", "Over the seeds (mean; min–max). A target binds when the unconstrained policy (fixed λ = 0) spends "
              "more than it. Best fixed model within budget: the single model with the highest quality among those "
              "whose mean cost per request is at most the target.", "",
              "| world | target | fixed λ=0 spend / target | realized / target | tenths within ±15% | paced quality "
              "| hindsight | paced − hindsight | best fixed model within budget | paced − it | hard cap quality "
              "| hard cap spend / target |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for world, tgts in raw["targets"].items():
        for name, rate in tgts.items():
            target = _text(raw, world, rate)
            rows = []
            names: list[str] = []
            for seed in raw["seeds"]:
                runs = [r for r in raw["runs"] if r["world"] == world and r["seed"] == seed]
                fixed = [r for r in runs if r["kind"] == "fixed"]
                paced = next(r for r in runs if r["kind"] == "paced" and r["target"] == target)
                cap = next(r for r in runs if r["kind"] == "cap" and r["target"] == target)
                free = next(r for r in fixed if r["lam"] == 0.0)
                hindsight = _interp_quality(fixed, rate)
                within = int(np.sum(np.abs(np.array(paced["tenths"]) / rate - 1) <= 0.15))
                model, best_q = _best_fixed_within(raw["fixed_models"][world][str(seed)], rate)
                names.append(model)
                rows.append((free["spend_per_step"] / rate, paced["spend_per_step"] / rate, within, paced["quality"],
                             hindsight, (paced["quality"] - hindsight) / hindsight, cap["quality"],
                             cap["spend_per_step"] / rate, best_q, paced["quality"] - best_q))
            a = np.array(rows)

            def cell(i: int, fmt: str, arr: np.ndarray = a) -> str:
                return f"{arr[:, i].mean():{fmt}} ({arr[:, i].min():{fmt}}–{arr[:, i].max():{fmt}})"

            lines.append(f"| {world} | {name}: {rate:.6f} | {cell(0, '.2f')} | {cell(1, '.3f')} | "
                         f"{cell(2, '.0f')}/10 | {cell(3, '.4f')} | {cell(4, '.4f')} | {cell(5, '+.1%')} | "
                         f"{'/'.join(sorted(set(names)))} {cell(8, '.4f')} | {cell(9, '+.4f')} | "
                         f"{cell(6, '.4f')} | {cell(7, '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(raw: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for world, tgts in raw["targets"].items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for (name, rate), color in zip(tgts.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False):
            target = _text(raw, world, rate)
            for r in raw["runs"]:
                if r["world"] != world or r["target"] != target or r["seed"] != raw["seeds"][0]:
                    continue
                steps = np.arange(len(r["cum_spend"])) * 10
                style = "-" if r["kind"] == "paced" else ":"
                ax1.plot(steps, r["cum_spend"], style, color=color, label=f"{name} {r['kind']}")
                if r["kind"] == "paced":
                    lam = [np.nan if x is None else x for x in r["lambda"]]
                    ax2.plot(np.arange(len(lam)) * 10, lam, color=color, label=name)
            ax1.plot([0, raw["steps"]], [0, rate * raw["steps"]], "--", color=color, alpha=0.5)
        ax1.set(xlabel="step", ylabel="cumulative spend (USD)", title=f"{world}: spend (dashed: target)")
        ax2.set(xlabel="step", ylabel="λ (quality points per USD)", yscale="log", title=f"{world}: λ of the pacer")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(OUT / f"{world}.png", dpi=90)
        plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replot", action="store_true", help="the tables and plots again from results/runs.json")
    if parser.parse_args().replot:
        saved = _compact(json.loads((OUT / "runs.json").read_text()))
        (OUT / "runs.json").write_text(json.dumps(saved))
        (OUT / "table.md").write_text(summarize(saved))
        plot(saved)
    else:
        main()
