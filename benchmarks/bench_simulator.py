"""Simulator speed: routed-and-learned steps per second, a 10-seed run's wall time, LinUCB vs MABWiser updates.

- `steps_per_s`: one process, `vw-squarecb` through a real `Router`, the prompt featurized at every step
  (no feature cache), on RouteLLM's real prompts (`../shared/data/routellm`, else the committed sample);
  steps per CPU-second of the loop (the machine is shared; wall-clock time would measure the neighbours).
  `steps_per_s_cached`: the same with each prompt featurized once per process, as `simulate` runs.
- `ten_seed_run_s`: `simulate` with 2 workers, vw-squarecb, 10 seeds, every RouteLLM prompt (15,521 per run).
- `linucb_update_us` vs `mabwiser_linucb_update_us`: one update each, 5 arms, d = 64, in this same run.
  Ours includes projecting the context (`dense_vector`); MABWiser gets the vector ready-made.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUTELLM = ROOT.parent / "shared" / "data" / "routellm" / "routellm.csv.gz"
SAMPLE = ROOT / "tests" / "data" / "routellm_sample.csv.gz"


def _table() -> tuple[Path, str]:
    return (ROUTELLM, "RouteLLM, 15,521 real prompts") if ROUTELLM.exists() else (SAMPLE, "committed 240-row sample")


def steps_per_second(path: Path, policy: str = "vw-squarecb", steps: int = 15_000, cache: bool = False) -> float:
    from simulator.environments import EnvSpec
    from simulator.runner import Plan, Task, Workspace

    plan = Plan(
        env=EnvSpec.parse(f"dataset:{path}"),
        policies=(policy,),
        cost_weights=(20.0,),
        seeds=(0,),
        steps=steps,
        cache_features=cache,
    )
    workspace = Workspace(plan)
    workspace.prepare()
    return workspace.run(Task(policy, 20.0, 0)).steps_per_s


def ten_seed_run(path: Path) -> tuple[float, int]:
    from simulator.environments import EnvSpec
    from simulator.runner import Plan, simulate

    plan = Plan(
        env=EnvSpec.parse(f"dataset:{path}"), policies=("vw-squarecb",), cost_weights=(20.0,), seeds=tuple(range(10))
    )
    started = time.perf_counter()
    result = simulate(plan, workers=2)
    return time.perf_counter() - started, result.n_steps


def update_times(n: int = 2000) -> tuple[float, float]:
    """Median µs per update: our LinUCB (with the projection) and MABWiser's LinUCB `partial_fit`."""
    from mabwiser.mab import MAB, LearningPolicy

    from bandit_router.catalog import ModelSpec
    from bandit_router.features import FeatureExtractor, dense_vector
    from bandit_router.outcomes import load_table
    from bandit_router.policies import make_policy

    path, _ = _table()
    prompts = load_table(path).prompts
    extractor = FeatureExtractor()
    contexts = [extractor.extract(prompts[i % len(prompts)]) for i in range(n)]
    arms = [ModelSpec(f"m{k}", 1.0, 1.0) for k in range(5)]
    rng = np.random.default_rng(0)
    rewards = rng.random(n)
    ours = make_policy("linucb", dim=64)
    ours_us = []
    for i, ctx in enumerate(contexts):
        t = time.perf_counter()
        ours.update(ctx, arms[i % 5], float(rewards[i]), 1.0)
        ours_us.append(time.perf_counter() - t)
    vectors = [dense_vector(c, 64)[None, :] for c in contexts]
    mab = MAB([a.name for a in arms], LearningPolicy.LinUCB(alpha=0.5, l2_lambda=1.0), seed=0)
    mab.fit([arms[0].name], [0.5], vectors[0])
    theirs_us = []
    for i, x in enumerate(vectors):
        t = time.perf_counter()
        mab.partial_fit([arms[i % 5].name], [float(rewards[i])], x)
        theirs_us.append(time.perf_counter() - t)
    return float(np.median(ours_us)) * 1e6, float(np.median(theirs_us)) * 1e6


def run() -> list[dict[str, Any]]:
    path, what = _table()
    rows: list[dict[str, Any]] = []
    speed = steps_per_second(path)
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "steps_per_s",
            "value": round(speed, 1),
            "unit": "steps/s",
            "target": ">= 5000",
            "ok": speed >= 5000,
            "note": f"vw-squarecb, 2 models, features at every step, per CPU-second of one process; {what}",
        }
    )
    cached = steps_per_second(path, cache=True)
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "steps_per_s_cached",
            "value": round(cached, 1),
            "unit": "steps/s",
            "note": "the same, each prompt featurized once per process (as simulate runs)",
        }
    )
    world = steps_per_second_world()
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "steps_per_s_world",
            "value": round(world, 1),
            "unit": "steps/s",
            "note": "vw-squarecb, 5 models, synthetic:default, features at every step, per CPU-second",
        }
    )
    if path == ROUTELLM:
        seconds, n = ten_seed_run(path)
        rows.append(
            {
                "benchmark": "simulator",
                "metric": "ten_seed_run_s",
                "value": round(seconds, 1),
                "unit": "s",
                "target": "< 60",
                "ok": seconds < 60,
                "note": f"simulate: vw-squarecb, 10 seeds × {n:,} prompts, 2 workers, incl. start-up",
            }
        )
    ours, theirs = update_times()
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "linucb_update_us",
            "value": round(ours, 1),
            "unit": "µs",
            "note": "bandit_router linucb, 5 arms, d=64, incl. dense_vector",
        }
    )
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "mabwiser_linucb_update_us",
            "value": round(theirs, 1),
            "unit": "µs",
            "note": "MABWiser LinUCB partial_fit, 5 arms, d=64, vector given",
        }
    )
    rows.append(
        {
            "benchmark": "simulator",
            "metric": "linucb_vs_mabwiser_speedup",
            "value": round(theirs / ours, 1),
            "unit": "×",
            "target": ">= 10",
            "ok": theirs / ours >= 10,
            "note": "median update time ratio",
        }
    )
    return rows


def steps_per_second_world(steps: int = 10_000) -> float:
    from simulator.environments import EnvSpec
    from simulator.runner import Plan, Task, Workspace

    plan = Plan(
        env=EnvSpec.parse("synthetic:default"),
        policies=("vw-squarecb",),
        cost_weights=(20.0,),
        seeds=(0,),
        steps=steps,
        cache_features=False,
    )
    workspace = Workspace(plan)
    workspace.prepare()
    return workspace.run(Task("vw-squarecb", 20.0, 0)).steps_per_s


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for row in run():
        print(row)
