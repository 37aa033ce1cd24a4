"""What computing several requests' Thompson pmfs in one stacked quadrature saves
(`exploration.gaussian_argmax_pmfs`, which `Router.route_many` uses for one event-loop iteration's routes).

    python -m benchmarks.pmf_stacked [--seed 0]

The stacked quadrature is checked bit for bit against one `gaussian_argmax_pmf` call per request on random
posteriors, then both are timed for 8 models at R = 1, 4 and 20 requests (an event-loop iteration of a loaded
server starts ≈ 20 routes at 64 connections, ≈ 5 at 8). Since the quadrature is compiled (`argmax_kernel`,
docs/service/performance.md's seventh pass), `gaussian_argmax_pmfs` is one compiled call per pmf: both timings
are the same work, and this measures what the numpy code's stacking saved only with an older checkout.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bandit_router.exploration import gaussian_argmax_pmf, gaussian_argmax_pmfs


def _best_us(fn: object, repeat: int = 15, number: int = 200) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - started) / number * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    compared = different = 0
    for _ in range(3000):
        k, rows = int(rng.integers(2, 13)), int(rng.integers(1, 30))
        means, sds = rng.uniform(0.3, 0.5, (rows, k)), rng.uniform(0.05, 0.4, (rows, k))
        out = gaussian_argmax_pmfs(list(means), list(sds))
        for r in range(rows):
            compared += 1
            different += gaussian_argmax_pmf(means[r], sds[r]).tobytes() != out[r].tobytes()
    print(f"bit for bit: {compared} pmfs compared, {different} different (seed {args.seed})")
    for rows in (1, 4, 20):
        means, sds = rng.uniform(0.3, 0.5, (rows, 8)), rng.uniform(0.2, 0.4, (rows, 8))
        each = _best_us(lambda m=means, s=sds: [gaussian_argmax_pmf(a, b) for a, b in zip(m, s, strict=True)])
        together = _best_us(lambda m=means, s=sds: gaussian_argmax_pmfs(list(m), list(s)))
        each, together = each / rows, together / rows
        print(f"8 models, {rows} requests: one call each {each:.1f} µs per request, stacked {together:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
