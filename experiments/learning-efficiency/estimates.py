"""What the default policy believes about each model on each prompt kind, against the truth, during a run.

    .venv/bin/python experiments/learning-efficiency/estimates.py [SPEC] [λ] \
        > experiments/learning-efficiency/results/X.md

SPEC is `default` or one of its settings (`default:evidence=0`): the script reads that policy's posterior.

RouterBench's RouterDC *train* split (a tuning set), seeds 100–102, one pass from nothing. At a quarter, half and
the end of each run: per prompt kind, the four models with the highest mean estimate q̂_m(φ) over the kind's last
200 prompts seen (the policy's `predict`), with the kind's true mean quality (what q̂ estimates; the cost is priced
apart, so at λ = 0 both are the reward); then GPT-4's feedback count, its per-model mean μ̂, the sd of μ̂ and its
corrections' weights ω (one per shrinkage level), and every other model's summed ω and feedback count. Shows
whether a model is judged on the kinds it was sent (a selection-biased μ̂ whose corrections have not earned their
place) rather than on the kind at hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tune.py: the tuning split

from tune import SETS

from simulator.agents.router_agent import _Run
from simulator.report import git_commit
from simulator.runner import Plan, Workspace

SEEDS = (100, 101, 102)
WATCHED = "gpt-4-1106-preview"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default="default", metavar="SPEC")
    parser.add_argument("lam", nargs="?", type=float, default=0.0, metavar="λ")
    args = parser.parse_args()
    spec, lam = args.spec, args.lam
    plan = Plan(env=SETS["routerbench-train"], policies=(spec,), cost_weights=(lam,), seeds=SEEDS)
    ws = Workspace(plan)
    ws.prepare()
    if not hasattr(ws.agent(spec).make_router(ws.episode(SEEDS[0]), lam, SEEDS[0]).policy, "_posterior_of"):
        sys.exit(f"estimates.py: {spec!r} is not the default policy (or one of its settings): no posterior to show")
    print(f"# What `{spec}` believes per prompt kind, λ = {lam:g}\n")
    print(
        f"Command: `.venv/bin/python experiments/learning-efficiency/estimates.py {spec} {lam:g}`; "
        f"seeds {', '.join(map(str, SEEDS))}; commit `{git_commit()}`.\n"
    )
    for seed in SEEDS:
        episode, agent = ws.episode(seed), ws.agent(spec)
        router = agent.make_router(episode, lam, seed)
        run = _Run(agent, router, episode, ws.env, lam, seed)
        steps = episode.n_steps
        for t in range(steps):
            run.step(t)
            if t + 1 not in (steps // 4, steps // 2, steps):
                continue
            policy = router.policy
            models = tuple(router.models)
            names = [m.name for m in models]
            print(f"\n## Seed {seed}, after {t + 1} requests\n")
            print("| kind | the policy's top four: estimate (true mean quality of the kind) |")
            print("|---|---|")
            for d, kind in enumerate(episode.domain_names):
                rows = [int(episode.rows[i]) for i in range(t + 1) if episode.domains[i] == d][-200:]
                estimate = np.mean([policy.predict(ws.env.context(r, ws.extractor), models)[0] for r in rows], axis=0)
                true = episode.quality[episode.domains == d].mean(axis=0)
                top = np.argsort(-estimate)[:4]
                cells = ", ".join(
                    f"{names[k]} {estimate[k]:.3f} ({true[episode.model_names.index(names[k])]:.3f})" for k in top
                )
                print(f"| {kind} | {cells} |")
            base, sd, omega, _ = policy._posterior_of(models)
            arms = policy._arms
            k = names.index(WATCHED)
            others = ", ".join(
                f"{n}: {omega[i].sum():.2f} ({arms.n[arms.row[n]]:.0f})" for i, n in enumerate(names) if i != k
            )
            print(
                f"\n{WATCHED}: {arms.n[arms.row[WATCHED]]:.0f} feedbacks, μ̂ = {base[k]:.3f}, sd {sd[k]:.3f}, "
                f"ω = {np.round(omega[k], 2).tolist()}. Others' Σω (feedbacks): {others}."
            )


if __name__ == "__main__":
    main()
