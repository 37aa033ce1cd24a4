"""`Router.route` and `Router.learn` speed of policy specs, measured as `benchmarks/bench_core.py` measures the
`default` policy (5 catalog models, a 500-character prompt, 500 feedbacks first), in one run so that they can
be compared with each other (the machine's load moves them together):

    .venv/bin/python experiments/learning-efficiency/speed.py default default:sampler=ids,exploration=1.2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bandit_router.catalog import default_catalog
from bandit_router.router import Router
from bandit_router.types import Outcome, Request
from benchmarks.bench_core import PROMPT, _timed
from simulator.report import git_commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("specs", nargs="+", help="policy specs")
    parser.add_argument("--rounds", type=int, default=2, help="measure every spec this many times, interleaved")
    args = parser.parse_args()
    models = list(default_catalog())[:5]
    request = Request(prompt=PROMPT, context={"tenant": "acme"})
    print(f"Command: `{' '.join(['speed.py', *sys.argv[1:]])}`; commit `{git_commit()}`.\n")
    print("| policy | round | route p50 µs | route p99 µs | route CPU µs/call | learn /s |")
    print("|---|---|---|---|---|---|")
    for round_ in range(args.rounds):
        for spec in args.specs:
            router = Router(models, spec, seed=0)
            for i in range(500):
                d = router.route(request)
                router.learn(d, Outcome(quality=float(i % 3 == 0), output_tokens=200))
            t, cpu = _timed(lambda r=router: r.route(request), 5_000)
            decisions = [router.route(request) for _ in range(256)]
            outcome = Outcome(quality=0.7, output_tokens=180)
            started = time.perf_counter()
            for i in range(10_000):
                router.learn(decisions[i % 256], outcome)
            rate = 10_000 / (time.perf_counter() - started)
            p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
            print(f"| {spec} | {round_ + 1} | {p50:.1f} | {p99:.1f} | {cpu:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
