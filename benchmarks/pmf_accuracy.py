"""How far the `default` policy's pmf (`exploration.gaussian_argmax_pmf`) is from the exact Thompson probability.

    python -m benchmarks.pmf_accuracy [--cases 30] [--seed 1]

For random posteriors like a service's (2–8 models, means in [0.2, 0.5], sds in [0.01, 0.12]) it compares the
quadrature the router samples from with p_a = ∫ φ_a(t) Π_{b≠a} Φ_b(t) dt by adaptive integration
(`scipy.integrate.quad`, tolerance 1e-13, over the models the quadrature keeps in play, renormalised like it).
The router logs the pmf it sampled from, so the logged propensity is exact for what was done either way; this
says how far that pmf is from Thompson sampling's, i.e. what any other quadrature rule would change.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import integrate
from scipy.stats import norm

from bandit_router.exploration import gaussian_argmax_pmf


def exact(mean: np.ndarray, sd: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """The Thompson probabilities of the models in `alive` (0 elsewhere), renormalised over them."""
    out = np.zeros(len(mean))
    others = [b for b in range(len(mean)) if alive[b]]
    for a in others:
        def density(t: float, a: int = a) -> float:
            rest = [norm.cdf(t, mean[b], sd[b]) for b in others if b != a]
            return float(norm.pdf(t, mean[a], sd[a]) * np.prod(rest))
        out[a] = integrate.quad(density, mean[a] - 12 * sd[a], mean[a] + 12 * sd[a], epsabs=1e-14, epsrel=1e-13,
                                limit=500, points=sorted(mean[alive]))[0]
    return out / out.sum()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    errors = []
    for _ in range(args.cases):
        k = int(rng.integers(2, 9))
        mean, sd = rng.uniform(0.2, 0.5, k), rng.uniform(0.01, 0.12, k)
        pmf = gaussian_argmax_pmf(mean, sd)
        errors.append(float(np.abs(pmf - exact(mean, sd, pmf > 0)).max()))
    print(f"{args.cases} cases (seed {args.seed}): largest |quadrature − exact| per case: "
          f"median {np.median(errors):.1e}, max {max(errors):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
