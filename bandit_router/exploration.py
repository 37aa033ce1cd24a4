"""Scores → pmf. Every function takes scores in reward units (q̂ − λ·ĉ) of shape (K,) and returns a pmf (K,).

Ties at the top share the greedy mass equally, so a pmf never depends on the order of the models.
K is small (a handful of models), so the arithmetic runs on Python floats: faster than numpy at this size; the
Thompson quadrature is one compiled function (`argmax_kernel`, numba).
Scores, means and sds must be finite: a NaN or an infinity raises `ValueError` (no pmf is defined for them; a NaN
mean made `gaussian_argmax_pmf` divide by zero, and `greedy` too).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import log_ndtr

TIE_TOLERANCE = 1e-12


def _check_finite(function: str, *values: list[float]) -> None:
    """`ValueError` when a value is NaN or infinite. One sum per list first (a NaN or an infinity makes it
    non-finite), so finite input costs a fraction of a µs; a sum that overflowed is then checked value by value."""
    for listed in values:
        if not math.isfinite(sum(listed)) and not all(map(math.isfinite, listed)):
            raise ValueError(f"{function}: scores, means and sds must be finite numbers, got {listed}")


def _top(scores: list[float], function: str = "greedy") -> list[bool]:
    _check_finite(function, scores)
    best = max(scores)
    return [s >= best - TIE_TOLERANCE for s in scores]


def greedy(scores: np.ndarray) -> np.ndarray:
    """All mass on the best score (split evenly among exact ties)."""
    top = _top(scores.tolist())
    share = 1.0 / sum(top)
    return np.array([share if t else 0.0 for t in top])


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """p = (1 − ε)·greedy + ε/K."""
    top = _top(scores.tolist(), "epsilon_greedy")
    share = (1.0 - epsilon) / sum(top)
    floor = epsilon / len(top)
    return np.array([floor + share if t else floor for t in top])


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """p_a ∝ exp(s_a / τ). Small τ → greedy, large τ → uniform."""
    s = scores.tolist()
    _check_finite("softmax", s)
    best = max(s)
    tau = max(temperature, 1e-12)
    w = [math.exp((x - best) / tau) for x in s]
    total = sum(w)
    return np.array([x / total for x in w])


def squarecb(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-gap weighting (Abe & Long 1999; Foster & Rakhlin 2020, "Beyond UCB"):

        p_a = 1 / (K + γ·(s* − s_a))  for a ≠ a*,   p_{a*} = 1 − Σ_{a≠a*} p_a

    γ grows with the number of updates (γ_t = γ₀·t^ρ), so exploration shrinks as the estimates firm up.
    Exact ties at the top share the remaining mass.
    """
    s = scores.tolist()
    _check_finite("squarecb", s)
    k = len(s)
    best = max(s)
    top = [x >= best - TIE_TOLERANCE for x in s]
    p = [0.0 if t else 1.0 / (k + gamma * (best - x)) for x, t in zip(s, top, strict=True)]
    share = (1.0 - sum(p)) / sum(top)
    return np.array([share if t else x for x, t in zip(p, top, strict=True)])


def monte_carlo_pmf(draw: Callable[[int], np.ndarray], n_draws: int) -> np.ndarray:
    """Estimate the pmf of "argmax of one random draw" from `n_draws` draws (Thompson sampling).

    `draw(n)` returns sampled scores of shape (n, K). The router then samples from this pmf, so the logged
    probability is exactly the probability with which the model was chosen.
    """
    samples = draw(n_draws)
    if not math.isfinite(float(_add(samples, axis=None))) and not np.isfinite(samples).all():
        raise ValueError("monte_carlo_pmf: the drawn scores must be finite numbers (a NaN or an infinity was drawn)")
    top = samples >= samples.max(axis=1, keepdims=True) - TIE_TOLERANCE
    counts = (top / top.sum(axis=1, keepdims=True)).sum(axis=0)  # a tie splits that draw's vote
    return np.asarray(counts / counts.sum())


def gaussian_argmax_pmf(mean: np.ndarray, sd: np.ndarray, dominance: float = 3.0, nodes: int = 16) -> np.ndarray:
    """The pmf of "argmax of one draw" when score_a ~ N(mean_a, sd_a²) independently (Thompson sampling):

        p_a = ∫ φ((t − mean_a)/sd_a)/sd_a · Π_{b≠a} Φ((t − mean_b)/sd_b) dt

    by the trapezoid rule on one grid of t: the union of every arm's `nodes` Gauss–Hermite points, so the grid is
    dense wherever any arm's density or distribution function changes fast (a narrow arm's Φ is a near step);
    then renormalised (with 16 nodes within ≈ 0.01 of the exact integral, off most where a wide arm meets a narrow
    one: `tests/test_default_reference.py`). Arms whose mean + β·sd is below the highest mean − β·sd of any arm (β =
    `dominance`) are confidently dominated: probability 0, and they drop out of the products. Exact ties of (mean,
    sd) get equal probability.
    The router samples from this pmf and logs its value, so the logged propensity is exact for what was done.

    That grid fails when an arm in play is degenerate (`_degenerate`: an sd of 0, or one many orders of magnitude
    below another arm's sd or its own mean, or below the smallest normal float); those pmfs are integrated per arm
    in standard units instead (`_argmax_pmf_per_arm`), which tends to the point-mass comparison as sds go to 0.
    Every other input keeps the union grid's values.

    The union grid's sum is `argmax_kernel.argmax_pmf`, compiled; the checks it cannot settle with one quick
    proof (non-finite values, an arm that may be degenerate, no arm in play) come back here.
    """
    u = _HERMITE.get(nodes)
    if u is None:
        u = _hermite(nodes)
    kernel = _KERNEL or load_kernel()
    out = np.zeros(len(mean))
    try:
        status = kernel.argmax_pmf(mean, sd, u, dominance, out, False)
    except TypeError:  # not float64 vectors (numba's signature: another dtype, a strided view, a read-only array)
        mean, sd = np.array(mean, dtype=np.float64), np.array(sd, dtype=np.float64)
        status = kernel.argmax_pmf(mean, sd, u, dominance, out, False)
    if status == kernel.OK:
        return out
    means, sds = mean.tolist(), sd.tolist()
    _check_finite("gaussian_argmax_pmf", means, sds)
    alive = _alive(means, sds, dominance)
    if not alive:  # a ZeroDivisionError before
        raise ValueError(f"gaussian_argmax_pmf: no arm is in play with dominance {dominance} and sds {sds} (the "
                         "dominance and every sd must be ≥ 0)")
    if len(alive) > 1 and _degenerate(means, sds, alive):
        return _argmax_pmf_per_arm(means, sds, alive)
    kernel.argmax_pmf(mean, sd, u, dominance, out, True)
    return out


_KERNEL: Any = None


def load_kernel() -> Any:
    """The compiled quadrature (`argmax_kernel`), imported on first use: numba and the function's cached machine
    code cost ≈ 0.7 s of CPU and ≈ 135 MB to load, which only processes that compute this pmf should pay, and
    before their first request (`HierarchicalThompsonPolicy.warm_up`, which `Router` calls when it is built)."""
    global _KERNEL
    if _KERNEL is None:
        from . import argmax_kernel

        # its first call costs ≈ 0.3 ms more than the next ones (numba's runtime starting): made here
        argmax_kernel.argmax_pmf(np.array([0.0, 0.1]), np.ones(2), _hermite(16), 3.0, np.zeros(2), False)
        _KERNEL = argmax_kernel
    return _KERNEL


def _alive(means: list[float], sds: list[float], dominance: float) -> list[int]:
    """The arms not confidently dominated: mean + β·sd ≥ max(mean − β·sd) (NaN: none)."""
    lows, highs = [], []
    for m, s in zip(means, sds, strict=True):  # one loop (a few µs of list comprehensions saved per route)
        spread = dominance * s
        lows.append(m - spread)
        highs.append(m + spread)
    top = math.nan if any(map(math.isnan, lows)) else max(lows)
    cut = top - TIE_TOLERANCE
    return [a for a, high in enumerate(highs) if high >= cut]


DEGENERATE_RATIO = 1e-6
"""An arm in play whose sd is below this × the widest one's is degenerate: on the union grid the trapezoid
between its outermost node (density ≈ 3·10⁻¹⁰/sd) and the next arm's node adds ≈ 10⁻¹⁰ × (that gap / sd) of
mass it does not have (0.34 instead of 0 at sd 10⁻¹² beside an sd of 0.1)."""
DEGENERATE_PRECISION = 1e-13
"""… or below this × the largest |mean| in play: the grid's t = mean + sd·u then resolves z = (t − mean)/sd only
to ≈ 10⁻¹⁶·|mean|/sd, and below sd ≈ 10⁻¹⁴·|mean| the union grid's values degrade (above it they do not: at
λ·cost in the millions and sds of 10⁻³ the union grid gives the same pmf as with the means shifted to 0)."""


def _degenerate(means: list[float], sds: list[float], alive: list[int]) -> bool:
    """Whether an arm in play has an sd of 0 or one below `DEGENERATE_RATIO` × the widest arm's sd or below
    `DEGENERATE_PRECISION` × the largest |mean| in play, or below the smallest normal float (2.2·10⁻³⁰⁸: the
    grid's density 1/sd overflows to inf, and with every sd that small the two other bounds underflow to 0; its
    pmf was NaN) (infinite or NaN values: never)."""
    if len(alive) < len(sds):
        if not alive:  # NaN means or sds
            return False
        means, sds = [means[a] for a in alive], [sds[a] for a in alive]
    largest = max(max(means), -min(means))
    return min(sds) < max(DEGENERATE_RATIO * max(sds), DEGENERATE_PRECISION * largest, sys.float_info.min) < math.inf


_STANDARD_GRID = np.linspace(-8.5, 8.5, 171)
"""u from −8.5 to 8.5 by 0.1: the trapezoid rule on φ over it is exact to ≈ 10⁻¹⁶ (φ's mass beyond ±8.5 is
10⁻¹⁷, and the rule's error on a Gaussian falls as exp(−2π²/h²))."""


STEP_WIDTH = 1e-13
"""The narrowest step `_argmax_pmf_per_arm` resolves, in standard units: a narrower one (a point mass's) is
bracketed by nodes this far apart (≈ 5 floats at |u| = 8.5), so the trapezoid misplaces at most ≈ 10⁻¹⁴ of mass."""


SMOOTH_WIDTH = 0.3
"""A factor Φ((mean_a − mean_b + sd_a·u)/sd_b) steps over a width sd_b/sd_a in u; from this width up the standard
grid's step 0.1 integrates it without refinement (the trapezoid rule's error on an analytic integrand falls
exponentially in width/step), so only narrower arms add points: a few hundred per arm, not K × 171."""


def _argmax_pmf_per_arm(means: list[float], sds: list[float], alive: list[int]) -> np.ndarray:
    """`gaussian_argmax_pmf` for degenerate sds: per arm a, in its standard units u = (t − mean_a)/sd_a,

        p_a = ∫ φ(u) · Π_{b≠a} Φ((mean_a − mean_b + sd_a·u) / sd_b) du

    by the trapezoid rule on `_STANDARD_GRID`, refined where a factor b steps (an arm b narrower than a steps
    around u = (mean_b − mean_a)/sd_a over a width sd_b/sd_a: the same grid scaled to that width, at least
    `STEP_WIDTH`, is added for the arms narrower than `SMOOTH_WIDTH` × sd_a; the others' factors are smooth on
    the standard grid), then
    renormalised over the arms in play. Only differences of means and ratios of sds enter, so nothing is lost
    to the size of the means; an sd of 0 is a point mass (p_a = Π_{b≠a} Φ((mean_a − mean_b)/sd_b), and two
    point masses compare their means, ties sharing). Exact ties of (mean, sd) get equal probability.
    """
    m = np.array([means[a] for a in alive])
    s = np.array([sds[a] for a in alive])
    p = np.empty(len(alive))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(len(alive)):
            d = m[i] - m  # (arm,)
            u = _STANDARD_GRID
            narrower = s < SMOOTH_WIDTH * s[i]  # the others' factors are smooth on the standard grid
            if s[i] > 0 and narrower.any():
                centres, widths = -d[narrower] / s[i], np.maximum(s[narrower] / s[i], STEP_WIDTH)
                steps = (centres[:, None] + widths[:, None] * _STANDARD_GRID).ravel()
                u = np.unique(np.concatenate([u, steps[np.abs(steps) <= _STANDARD_GRID[-1]]]))
            z = (d[:, None] + s[i] * u) / s[:, None]  # (arm, grid); a point mass b: ±inf, or nan on a tie
            z[np.isnan(z)] = 0.0  # Φ(0) = ½: tied point masses share
            log_f = _add(log_ndtr(z), axis=0) - log_ndtr(z[i])  # Σ_{b≠a} log Φ_b
            integrand = np.exp(log_f - 0.5 * u * u)
            p[i] = _add((integrand[1:] + integrand[:-1]) * (u[1:] - u[:-1]))
    total = _add(p)
    out = np.zeros(len(means))
    out[alive] = p / total if total > 0 else 1.0 / len(alive)
    return out


def gaussian_argmax_pmfs(
    means: Sequence[np.ndarray], sds: Sequence[np.ndarray], dominance: float = 3.0, nodes: int = 16
) -> list[np.ndarray]:
    """`gaussian_argmax_pmf` of each (means[i], sds[i]). (Its numpy transcription evaluated the pmfs of one event
    loop iteration as one stacked evaluation, to share numpy's per-call overhead; the compiled quadrature has
    none to share, so this is one call each, and `Router.route_many` keeps its batch form.)"""
    return [gaussian_argmax_pmf(mean, sd, dominance, nodes) for mean, sd in zip(means, sds, strict=True)]


def ids_pmf(
    mean: np.ndarray,
    sd: np.ndarray,
    rng: np.random.Generator,
    draws: int = 256,
    dominance: float = 3.0,
    mix: float = 0.02,
) -> np.ndarray:
    """Variance-based information-directed sampling (Russo & Van Roy 2018, "Learning to optimize via
    information-directed sampling", section 6) when score_a ~ N(mean_a, sd_a²) independently.

    From M = `draws` joint draws θ⁽ⁱ⁾ of the scores from `rng` (A*⁽ⁱ⁾ = argmax_a θ⁽ⁱ⁾_a), per arm

        Δ_a = E[max_b θ_b] − E[θ_a]                                  (expected regret of playing a)
        g_a = Σ_{a*} P(A* = a*)·(E[θ_a | A* = a*] − E[θ_a])²          (what playing a tells about A*)

    with every expectation the mean over the draws and P(A* = a*) the share of draws whose best arm is a*
    (so Δ_a ≥ 0 exactly); arms best in no draw are left out (P(A* = a) ≈ 0 and g_a ≈ 0). The pmf π minimises
    the information ratio (πᵀΔ)² / (πᵀg); a minimiser is supported on at most two arms (`_two_arm_minimum`).
    Then p = (1 − `mix`)·π + `mix`·uniform over the arms not confidently dominated (mean + β·sd ≥ the best
    mean − β·sd, β = `dominance`; the others get 0), so that every model that may still be best keeps a
    probability an off-policy estimate can divide by. The draws come from `rng`, so a seeded run is
    reproducible; the pmf is random through them, and the router samples from the returned pmf and logs its
    value: the exact probability of what was done given the draws.
    """
    means, sds = mean.tolist(), sd.tolist()
    _check_finite("ids_pmf", means, sds)
    alive = _alive(means, sds, dominance)
    out = np.zeros(len(means))
    if len(alive) <= 1:
        out[alive or slice(None)] = 1.0 / max(len(alive), len(means))
        return out
    k = len(alive)
    theta = rng.standard_normal((draws, k))
    if k == len(means):
        theta *= sd
        theta += mean
    else:
        theta *= np.array([sds[a] for a in alive])
        theta += np.array([means[a] for a in alive])
    star = np.argmax(theta, axis=1)
    counts = np.bincount(star, minlength=k)
    pi = np.zeros(k)
    seen = counts.nonzero()[0]
    if len(seen) == 1:  # one arm best in every draw: Δ = 0 there, nothing left to learn about A*
        pi[seen[0]] = 1.0
    else:
        sums = (star[:, None] == seen).T @ theta  # [a*, a] = Σ θ_a over the draws whose best arm is a*
        average = _add(sums, axis=0)[seen] / draws  # every draw has its best arm in `seen`
        sums = sums[:, seen]
        delta = np.maximum(float(sums.trace()) / draws - average, 0.0)  # E[max] − E[θ_a]
        n = counts[seen]
        sums /= n[:, None]  # E[θ_a | A* = a*]
        sums -= average
        sums *= sums
        gain = n @ sums / draws
        (a, b), q = _two_arm_minimum(delta, gain)
        pi[seen[a]] += q
        pi[seen[b]] += 1.0 - q
    out[alive] = (1.0 - mix) * pi + mix / k
    return out


def _two_arm_minimum(delta: np.ndarray, gain: np.ndarray) -> tuple[tuple[int, int], float]:
    """argmin over pairs (a, b) and q ∈ [0, 1] of f(q) = (qΔ_a + (1 − q)Δ_b)² / (q·g_a + (1 − q)·g_b): the pair
    and q. Candidates: every single arm (q = 1; a ratio 0/0 counts as 0, x/0 as +∞) and every pair's stationary
    point when it lies inside (0, 1): with D = Δ_a − Δ_b, G = g_a − g_b, f′(q) = 0 at

        q* = Δ_b/D − 2·g_b/G,   where   f(q*) = 4·D·(Δ_b·g_a − Δ_a·g_b) / G².

    The first minimum wins (deterministic)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        single = np.where(delta > 0.0, delta * delta / gain, 0.0)
        d = np.subtract.outer(delta, delta)  # D, row a, column b
        g = np.subtract.outer(gain, gain)
        q = delta / d
        q -= 2.0 * gain / g
        cross = np.multiply.outer(gain, delta)
        cross -= cross.T  # Δ_b·g_a − Δ_a·g_b
        pair = 4.0 * d * cross / (g * g)
    pair[~((q > 0.0) & (q < 1.0))] = np.inf
    best = int(np.argmin(single))
    flat = int(np.argmin(pair))
    if pair.flat[flat] < single[best]:
        a, b = divmod(flat, len(delta))
        return (a, b), float(q.flat[flat])
    return (best, best), 1.0


_add = np.add.reduce
"""`ndarray.sum` without its Python wrapper (the same reduction)."""


_HERMITE: dict[int, np.ndarray] = {}


def _hermite(nodes: int) -> np.ndarray:
    """Gauss–Hermite nodes for the standard normal (√2 × the physicists' nodes), cached per size."""
    if nodes not in _HERMITE:
        _HERMITE[nodes] = np.polynomial.hermite.hermgauss(nodes)[0] * math.sqrt(2.0)
    return _HERMITE[nodes]


def with_floors(pmf: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """Give arm a at least `floors[a]` probability by mixing: p' = (1 − Σf)·p + f, with Σf scaled to ≤ 0.5."""
    if not any(floors.tolist()):  # every floor 0 (the usual case): as Σf = 0 below, without a numpy reduction
        return pmf
    total = float(_add(floors))
    if total <= 0:
        return pmf
    f = floors * min(1.0, 0.5 / total)
    return (1.0 - float(_add(f))) * pmf + f


def with_floor(pmf: np.ndarray, mask: list[bool], floor: float) -> np.ndarray:
    """Give each arm where `mask` is true at least `floor` probability (cold start), by mixing:

    p' = (1 − m·f)·p + f·1_mask,   m = number of masked arms, with m·f capped at 0.5.
    """
    m = sum(mask)
    if m == 0 or floor <= 0:
        return pmf
    f = min(floor, 0.5 / m)
    keep = 1.0 - m * f
    return np.array([keep * p + (f if c else 0.0) for p, c in zip(pmf.tolist(), mask, strict=True)])
