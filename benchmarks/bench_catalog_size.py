"""What a catalog's size costs `Router.route` with the `default` policy (and its checkpoint), K = 8 … 128 models.

    python -m benchmarks.bench_catalog_size [--sizes 8,16,32,64,128] [--advice-k 128]
                                            [--out benchmarks/results/scale-catalog.md]

`make bench` (`benchmarks.run`) runs `run()`: the first table's measures as result rows, no target.

Per size K: K synthetic models (seeded prices, 7 families, 3 tiers, no catalog prior), the same 500-character
prompt. **Cold**: a fresh router, every model uncertain and in play, so the Thompson pmf's quadrature evaluates
log Φ on K × 16K points (`exploration.gaussian_argmax_pmf`): the worst case, which lasts until the models' posteriors
separate. **Trained**: after 10·K route → learn rounds (each model's true success rate uniform in [0.3, 0.9]),
when the dominance cut has dropped the clearly worse models. Medians of 100 routes (`time.perf_counter`, garbage
collection on), and a check of the pmf after each router's routes (one cold, one trained): finite, sums to 1, every
model > 0 when cold. Also the size of `Router.snapshot()` (what a checkpoint stores; the `default` policy keeps a
3 × 64 × 64 matrix per model).

**What helps a fresh catalog of `--advice-k` models** (the second table): each model given a `prior_quality`
(seeded, uniform in [0.3, 0.9]) at `prior_strength` 2 (the default), 20, 100 and 1000: the models a fresh router
still has in play and its route's median; and a fresh router without priors routing each request among 16 of the
models (`Request.models`).
A busy shared machine makes the times noisy (the load average is printed); the K² growth is what the table shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.router import Router
from bandit_router.types import Outcome, Request
from benchmarks.provenance import load_note, machine
from simulator.report import git_commit

PROMPT = ("Explain the difference between a list and a tuple in Python, with examples of when to use each. " * 6)[:500]
OUT = Path(__file__).resolve().parent / "results" / "scale-catalog.md"


def catalog(k: int, seed: int = 0) -> list[ModelSpec]:
    rng = np.random.default_rng(seed)
    return [
        ModelSpec(f"model-{i:03d}", float(rng.uniform(0.05, 15.0)), float(rng.uniform(0.1, 60.0)),
                  tags={"family": f"family-{i % 7}", "tier": ("small", "medium", "large")[i % 3]})
        for i in range(k)
    ]


def _median_route_us(router: Router, request: Request, calls: int = 100) -> tuple[float, bool]:
    """Median µs of `calls` routes, and whether every pmf was finite and summed to 1."""
    times, sound = [], True
    for _ in range(calls):
        start = time.perf_counter()
        router.route(request)
        times.append(time.perf_counter() - start)
    pmf = np.array(list(router.pmf_now(router.featurize(request)).values()))
    sound = bool(np.isfinite(pmf).all() and abs(pmf.sum() - 1.0) < 1e-9)
    return statistics.median(times) * 1e6, sound


def measure(k: int, seed: int = 0) -> dict[str, float | bool]:
    request = Request(prompt=PROMPT, context={"tenant": "acme"})
    cold = Router(catalog(k, seed), "default", seed=seed)
    cold_pmf = np.array(list(cold.pmf_now(cold.featurize(request)).values()))
    cold_us, cold_sound = _median_route_us(cold, request)
    trained = Router(catalog(k, seed), "default", seed=seed)
    rng = np.random.default_rng(seed + 1)
    success = {m.name: float(rng.uniform(0.3, 0.9)) for m in trained.models}
    learn_times = []
    for _ in range(10 * k):
        decision = trained.route(request)
        outcome = Outcome(quality=float(rng.random() < success[decision.model]), output_tokens=200)
        start = time.perf_counter()
        trained.learn(decision, outcome)
        learn_times.append(time.perf_counter() - start)
    trained_us, trained_sound = _median_route_us(trained, request)
    in_play = sum(p > 0 for p in trained.pmf_now(trained.featurize(request)).values())
    return {
        "cold_us": cold_us, "trained_us": trained_us, "learn_us": statistics.median(learn_times) * 1e6,
        "in_play": in_play, "snapshot_mb": len(trained.snapshot()) / 1e6,
        "sound": cold_sound and trained_sound and bool((cold_pmf > 0).all()),
    }


ADVICE_STRENGTHS = (2.0, 20.0, 100.0, 1000.0)
ADVICE_SUBSET = 16


def advice(k: int, seed: int = 0) -> list[tuple[str, int, float]]:
    """(what, models in play, median route µs) of a fresh router of `k` models: with priors of each strength, then
    routing among `ADVICE_SUBSET` of them per request."""
    request = Request(prompt=PROMPT, context={"tenant": "acme"})
    rows = []
    for strength in ADVICE_STRENGTHS:
        qualities = np.random.default_rng(seed).uniform(0.3, 0.9, k)
        models = [dataclasses.replace(m, prior_quality=float(q), prior_strength=strength)
                  for m, q in zip(catalog(k, seed), qualities, strict=True)]
        router = Router(models, "default", seed=seed)
        us, _ = _median_route_us(router, request)
        in_play = sum(p > 0 for p in router.pmf_now(router.featurize(request)).values())
        rows.append((f"`prior_quality` U[0.3, 0.9], `prior_strength` {strength:g}", in_play, us))
    router = Router(catalog(k, seed), "default", seed=seed)
    subset = Request(prompt=PROMPT, context={"tenant": "acme"},
                     models=[m.name for m in router.models[:ADVICE_SUBSET]])
    us, _ = _median_route_us(router, subset)
    in_play = sum(p > 0 for p in router.route(subset).pmf)  # the pmf of the request's models
    rows.append((f"no prior, `models` = {ADVICE_SUBSET} of them per request", in_play, us))
    return rows


def run(sizes: tuple[int, ...] = (8, 16, 32, 64, 128)) -> list[dict[str, Any]]:
    """`measure` of each size as `benchmarks.run`'s result rows (no target: the K² growth is the finding)."""
    rows: list[dict[str, Any]] = []
    for k in sizes:
        r = measure(k)
        note = f"{r['in_play']} of {k} models in play when trained; pmfs sound: {'yes' if r['sound'] else 'NO'}"
        rows.append({"benchmark": f"route[default] K={k} cold", "metric": "p50", "value": round(float(r["cold_us"]), 1),
                     "unit": "us", "note": "a fresh router: every model in play"})
        rows.append({"benchmark": f"route[default] K={k} trained", "metric": "p50",
                     "value": round(float(r["trained_us"]), 1), "unit": "us", "note": note})
        rows.append({"benchmark": f"checkpoint K={k}", "metric": "size", "value": round(float(r["snapshot_mb"]), 2),
                     "unit": "MB", "note": "Router.snapshot() after 10·K feedbacks"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,32,64,128")
    parser.add_argument("--advice-k", type=int, default=128)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    commit = git_commit()  # `unknown` outside git (not an empty commit), `+dirty` with changes
    start_load = os.getloadavg()[0]
    rows = []
    for k in sizes:
        r = measure(k)
        rows.append(f"| {k} | {r['cold_us']:,.0f} | {r['trained_us']:,.0f} | {r['in_play']} | {r['learn_us']:,.0f} | "
                    f"{r['snapshot_mb']:.1f} | {'yes' if r['sound'] else '**no**'} |")
        print(rows[-1], flush=True)
    advice_rows = []
    for what, in_play, us in advice(args.advice_k):
        advice_rows.append(f"| {what} | {in_play} | {us:,.0f} |")
        print(advice_rows[-1], flush=True)
    load = load_note(start_load, os.getloadavg()[0])
    lines = [
        "# `Router.route` cost by catalog size (`default` policy)",
        "",
        f"Commit `{commit}`, {machine()}; {load}.",
        f"Command: `python -m benchmarks.bench_catalog_size --sizes {args.sizes} --advice-k {args.advice_k}` "
        "(seed 0; see the module docstring).",
        "",
        "| models K | cold route p50 µs | trained route p50 µs | models in play (trained) | learn p50 µs | "
        "snapshot MB | pmfs sound |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"A fresh router of {args.advice_k} models (no feedback yet):",
        "",
        "| catalog | models in play | route p50 µs |",
        "|---|---|---|",
        *advice_rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
