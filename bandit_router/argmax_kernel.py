"""The Thompson pmf's union-grid quadrature (`exploration.gaussian_argmax_pmf`) as one compiled function (numba).

The same rule as the numpy transcription it replaced: per arm a in play,

    p_a ∝ Σ_g (I_a(t_g) + I_a(t_{g+1}))·(t_{g+1} − t_g),   I_a(t) = exp(−z_a²/2) / sd_a · Π_{b≠a} Φ(z_b),

z_b = (t − mean_b)/sd_b, on the sorted union t of every arm's mean + sd·u (u: the Gauss–Hermite nodes),
renormalised. In numpy it was ≈ 17 calls on (K, G) arrays, each 0.5–1 µs of dispatch for a few hundred flops;
compiled, it is one call. Φ(z) = erfc(−z/√2)/2 with libm's `erfc`, the product Π_{b≠a} from a prefix and a
suffix (no division), and libm's `exp`, where numpy summed scipy's `log_ndtr` and took its SIMD `exp` of the sum:
the values differ from the numpy transcription's in the last bits (max |Δp| 4.4·10⁻¹⁶ on 20,000 posteriors:
`python -m benchmarks.pmf_jit`; docs/service/performance.md, seventh pass). No fast-math: IEEE operations in
the order written, so its own arithmetic does not depend on the CPU it is compiled for (libm's is the platform's).

Compiled once per installation: `cache=True` keeps the machine code beside this file (or in numba's user-wide
cache directory when this one is read-only; without either, it is compiled in each process). The signature is
given, so the function is compiled, or loaded from the cache, when this module is imported, never on a request;
a router with a Thompson policy imports it when it is built (`exploration.load_kernel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from numba import njit

OK, NOT_FINITE, UNCHECKED = 0, 1, 2
"""`argmax_pmf`'s answers: the pmf is in `out`; a mean or sd is NaN or infinite (nothing written); the quick
non-degeneracy proof failed, so the caller decides (`exploration._degenerate`) and calls again with `checked`."""

_SIGNATURE = "int64(float64[::1], float64[::1], float64[::1], float64, float64[::1], boolean)"
_SQRT1_2 = math.sqrt(0.5)
# exploration's constants, repeated: numba freezes the globals a function reads, and keys its cache on this file
# alone, so a change there would not reach a cached kernel (tests/test_argmax_kernel.py checks they are equal)
_TIE_TOLERANCE = 1e-12  # exploration.TIE_TOLERANCE
_DEGENERATE_RATIO = 1e-6  # exploration.DEGENERATE_RATIO
_DEGENERATE_PRECISION = 1e-13  # exploration.DEGENERATE_PRECISION
_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(signature: str) -> Callable[[_F], _F]:
    """`njit(signature, cache=True)`, or without the cache when numba finds no writable place for it."""
    def compile_(function: _F) -> _F:
        try:
            compiled = cast(_F, njit(signature, cache=True)(function))
        except RuntimeError:  # "cannot cache function …: no locator available" (a read-only install, no home)
            compiled = cast(_F, njit(signature)(function))
        return compiled
    return compile_


@_jit(_SIGNATURE)
def argmax_pmf(
    mean: np.ndarray, sd: np.ndarray, u: np.ndarray, dominance: float, out: np.ndarray, checked: bool
) -> int:
    """Write the pmf of `exploration.gaussian_argmax_pmf(mean, sd, dominance)` on the nodes `u` into `out` (K
    zeros on entry) and return `OK`; or `NOT_FINITE`, or `UNCHECKED` when `checked` is false and the quick proof
    that no arm in play is degenerate fails, or when there are no arms or `sd` is not as long as `mean`.

    The dominance cut is `exploration._alive`'s. The proof, `exploration._degenerate`'s answer without its passes
    (the same answer where it holds: `tests/test_argmax_kernel.py`): with β = `dominance` ≥ 0 every arm a in play
    has low_a ≤ top and high_a ≥ cut, so |mean_a| ≤ max(|top|, |cut|) + β·max(sd); when min(sd) ≥
    `DEGENERATE_RATIO`·max(sd) and min(sd) ≥ 2·`DEGENERATE_PRECISION`·(β·|max(sd)| + |top| + |cut|) (the 2 covers
    the rounding of these few steps) no arm in play is degenerate."""
    k = mean.shape[0]
    if k == 0 or sd.shape[0] != k:
        return UNCHECKED  # the caller's checks raise (no bounds checks here: sd[k] would be read past its end)
    for a in range(k):
        if not (math.isfinite(mean[a]) and math.isfinite(sd[a])):
            return NOT_FINITE
    top = -math.inf
    for a in range(k):
        low = mean[a] - dominance * sd[a]
        if low > top:
            top = low
    cut = top - _TIE_TOLERANCE
    alive = np.empty(k, dtype=np.int64)
    n = 0
    narrowest, widest = math.inf, -math.inf
    for a in range(k):
        if mean[a] + dominance * sd[a] >= cut:
            alive[n] = a
            n += 1
        narrowest = min(narrowest, sd[a])
        widest = max(widest, sd[a])
    if n == 0:
        return UNCHECKED  # a negative dominance left no arm in play: the caller raises
    if not checked and not (
        dominance >= 0 and narrowest >= _DEGENERATE_RATIO * widest
        and narrowest >= 2 * _DEGENERATE_PRECISION * (dominance * abs(widest) + abs(top) + abs(cut))
    ):
        return UNCHECKED
    if n == 1:
        out[alive[0]] = 1.0
        return OK
    nodes = u.shape[0]
    g = n * nodes
    t = np.empty(g)
    for i in range(n):
        m, s = mean[alive[i]], sd[alive[i]]
        for j in range(nodes):
            t[i * nodes + j] = s * u[j] + m
    t.sort()
    cdf = np.empty(n)  # Φ(z_b) at one t
    after = np.empty(n + 1)  # Π_{b ≥ i} Φ(z_b)
    p = np.zeros(n)
    before = np.empty(n)  # I_a at the previous t
    for j in range(g):
        for i in range(n):
            cdf[i] = 0.5 * math.erfc((mean[alive[i]] - t[j]) / sd[alive[i]] * _SQRT1_2)
        after[n] = 1.0
        for i in range(n - 1, -1, -1):
            after[i] = after[i + 1] * cdf[i]
        prefix = 1.0  # Π_{b < i} Φ(z_b)
        for i in range(n):
            m, s = mean[alive[i]], sd[alive[i]]
            z = (t[j] - m) / s
            here = math.exp(-0.5 * z * z) / s * (prefix * after[i + 1])
            if j > 0:
                p[i] += (here + before[i]) * (t[j] - t[j - 1])
            before[i] = here
            prefix *= cdf[i]
    total = 0.0
    for i in range(n):
        total += p[i]
    for i in range(n):
        out[alive[i]] = p[i] / total if total > 0 else 1.0 / n
    return OK
