"""`Router.route` (the `default` policy) from two checkouts on one machine in one run: `bench_core`'s loop (5
models, its 500-character prompt, 500 learned feedbacks first, 10,000 timed calls, garbage collection off) run in
turn by each checkout's package, each round in a fresh process, the order alternating between rounds.

    python -m benchmarks.route_ab --base CHECKOUT --label NAME [--this CHECKOUT] [--rounds 6]
    # → benchmarks/results/profiles/route-ab-NAME.md

Reported per round and as the median of the rounds: p50 and p99 of the wall-clock µs per call, and the process's
CPU µs per call over the loop (which a busy machine inflates less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from benchmarks import provenance
from simulator.report import checkout_commit

HERE = Path(__file__).resolve().parent

_ROUND = """
import json
import numpy as np
from bandit_router.catalog import default_catalog
from bandit_router.router import Router
from bandit_router.types import Outcome, Request
from benchmarks.bench_core import PROMPT, _timed
request = Request(prompt=PROMPT, context={"tenant": "acme"})
router = Router(list(default_catalog())[:5], "default", seed=0)
for i in range(500):
    router.learn(router.route(request), Outcome(quality=float(i % 3 == 0), output_tokens=200))
t, cpu = _timed(lambda: router.route(request), 10_000)
print(json.dumps({"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)), "cpu": cpu}))
"""


def _round(checkout: Path) -> dict[str, float]:
    """One round of the loop with `checkout`'s package (and its `benchmarks.bench_core`: the loop's code)."""
    result: dict[str, float] = provenance.run_side(checkout, _ROUND, f"{checkout}{os.pathsep}{HERE.parent}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_ab_arguments(parser, "route-ab-LABEL.md",
                                base_help="a checkout whose bandit_router is the baseline")
    args = parser.parse_args(argv)
    sides = {"base": args.base.resolve(), "this": args.this.resolve()}
    for side in sides.values():  # read before the run: the header records the commits it started from
        checkout_commit(side)
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for r in range(args.rounds):
        for side in (("base", "this") if r % 2 == 0 else ("this", "base")):
            runs[side].append(_round(sides[side]))
            print(side, runs[side][-1], flush=True)
    lines = [
        f"# Router.route (default policy) A/B: {args.label}",
        "",
        f"{provenance.sides_line(sides['base'], sides['this'])}; {provenance.machine()}; "
        f"{provenance.load_note(load, os.getloadavg()[0])}",
        f"command: python -m benchmarks.route_ab --base <checkout> --label {args.label} --rounds {args.rounds}",
        "",
        "| round | base p50 / p99 / CPU per call (µs) | this p50 / p99 / CPU per call (µs) |",
        "|---|---|---|",
    ]
    for r in range(args.rounds):
        b, t = runs["base"][r], runs["this"][r]
        lines.append(f"| {r + 1} | {b['p50']:.1f} / {b['p99']:.1f} / {b['cpu']:.1f} | "
                     f"{t['p50']:.1f} / {t['p99']:.1f} / {t['cpu']:.1f} |")
    med = {side: {k: statistics.median(x[k] for x in runs[side]) for k in ("p50", "p99", "cpu")} for side in runs}
    lines.append(f"| median | {med['base']['p50']:.1f} / {med['base']['p99']:.1f} / {med['base']['cpu']:.1f} | "
                 f"{med['this']['p50']:.1f} / {med['this']['p99']:.1f} / {med['this']['cpu']:.1f} |")
    provenance.write_report(args.out, f"route-ab-{args.label}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
