"""What computing several requests' Thompson pmfs in one stacked quadrature would save (an experiment: the
package does not do this).

    python -m benchmarks.pmf_stacked [--seed 0]

The quadrature of `exploration.gaussian_argmax_pmf`, written for R requests at once (arrays of R × K × G, the same
elementwise steps and the same per-row reductions), is checked bit for bit against one call per request on
random posteriors with every model in play (the only case stacked here), then both are timed for 8 models at
R = 1, 4 and 20 (an event-loop iteration of a loaded server starts ≈ 20 routes at 64 connections, ≈ 5 at 8).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy.special import log_ndtr

from bandit_router.exploration import _hermite, gaussian_argmax_pmf

_add = np.add.reduce


def stacked(means: np.ndarray, sds: np.ndarray, nodes: int = 16) -> np.ndarray:
    """`gaussian_argmax_pmf` of each row of `means`, `sds` (R, K), every model in play."""
    u = _hermite(nodes)
    m, s = means[:, :, None], sds[:, :, None]
    t = s * u
    t += m
    rows, k, n = t.shape
    t = t.reshape(rows, k * n)
    t.sort(axis=1)
    z = t[:, None, :] - m
    z /= s
    integrand = log_ndtr(z)
    np.subtract(_add(integrand, axis=1)[:, None, :], integrand, out=integrand)
    half_square = z * 0.5
    half_square *= z
    integrand -= half_square
    np.exp(integrand, out=integrand)
    integrand /= s
    trapezoids = integrand[:, :, 1:] + integrand[:, :, :-1]
    trapezoids *= (t[:, 1:] - t[:, :-1])[:, None, :]
    p: np.ndarray = _add(trapezoids, axis=2)
    return p / _add(p, axis=1)[:, None]


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
        out = stacked(means, sds)
        for r in range(rows):
            one = gaussian_argmax_pmf(means[r], sds[r])
            if (one > 0).all():
                compared += 1
                different += one.tobytes() != out[r].tobytes()
    print(f"bit for bit: {compared} pmfs compared, {different} different (seed {args.seed})")
    for rows in (1, 4, 20):
        means, sds = rng.uniform(0.3, 0.5, (rows, 8)), rng.uniform(0.2, 0.4, (rows, 8))
        each = _best_us(lambda m=means, s=sds: [gaussian_argmax_pmf(a, b) for a, b in zip(m, s, strict=True)])
        together = _best_us(lambda m=means, s=sds: stacked(m, s))
        each, together = each / rows, together / rows
        print(f"8 models, {rows} requests: one call each {each:.1f} µs per request, stacked {together:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
