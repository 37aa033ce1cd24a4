"""Metrics, computed as the anchors compute them. Pure functions on arrays; every array's shape is given.

Per run (one policy, one λ, one seed):
- reward_t = quality_t − λ·cost_t; mean quality, cost (USD per request), reward.
- The per-prompt **oracle** picks argmax_m q_m − λ·c_m among the available models (ties → cheaper).
- A **fixed** model answers every prompt (when unavailable: the cheapest available model, as `fixed:<m>` does);
  the **best fixed** model is the one with the highest total reward in hindsight, among the models that are
  available at some step (a dormant model that never arrives is no candidate).
- **Regret** against either: Σ_t (reward_ref,t − reward_t), as a curve over steps; **per request** over the
  whole stream, R(n)/n, and over its second half, (R(n) − R(n/2))/(n − n/2); the **break-even step**: the
  first step t with R(t') ≤ 0 for every t' ≥ t (the cumulative reward has caught up with the best fixed
  model's for good).

Two models (RouteLLM, Ong et al. 2024, `routellm/evals/evaluate.py`): a router gives points (strong-call
share s, quality q) — one per λ, or per threshold. With the anchors (0, q_weak) and (1, q_strong) added and
the points joined linearly (sorted by s; mixing two settings at random reaches any point in between):
- PGR(q) = (q − q_weak) / (q_strong − q_weak);
- APGR = mean of PGR(s) over s = 10%, 20%, …, 100% (the paper's definition, DESIGN §6; random = 0.55);
  `apgr_trapz` = ∫₀¹ PGR(s) ds by the trapezoid rule, as RouteLLM's evaluate.py computes it (random = 0.5);
- CPT(x%) = the smallest s with PGR(s) ≥ x% (RouteLLM interpolates the same curve with np.interp);
- share_at_quality(0.95·q_strong) = the strong-call share needed for 95% of the strong model's quality;
  `cost_share_for_quality` the same on the (cost / cost of always-strong) axis: 1 − it is the cost saving.

K models (RouterBench, Hu et al. 2024, `evaluation/AIQ.py`): each λ gives a point (mean cost, mean quality);
the **non-decreasing upper convex hull** of a router's points is extended flat to c_max, the largest mean
cost among all routers compared, and AIQ = (area under it from the router's cheapest point to c_max) / c_max,
i.e. the normalisation c_min = 0 of RouterBench's code (the paper writes 1/(c_max − c_min)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Floats = Sequence[float] | np.ndarray
"""A 1-d sequence of numbers."""

PGR_SHARES = np.linspace(0.1, 1.0, 10)
TIE = 1e-12


# -- summary statistics ----------------------------------------------------------------------------------
def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for fewer than 2 finite values)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), None
    if x.size < 2:
        return float(x.mean()), None
    from scipy import stats  # here: 0.7 s of imports that `bandit-router serve` need not pay (performance.md)

    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


def column_means(values: np.ndarray, empty: float = -np.inf) -> np.ndarray:
    """Mean of each column over its finite entries, shape (n, K) → (K,); `empty` where a column has none
    (without numpy's empty-slice warning)."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), empty)


# -- per-step choices ------------------------------------------------------------------------------------
def rewards(quality: np.ndarray, cost: np.ndarray, cost_weight: float) -> np.ndarray:
    """q − λ·c, same shape as the inputs."""
    return quality - cost_weight * cost


def oracle_choice(quality: np.ndarray, cost: np.ndarray, available: np.ndarray, cost_weight: float) -> np.ndarray:
    """Per step, the available model with the highest reward, the cheaper one on ties. Shapes (n, K) → (n,);
    −1 where no model is available."""
    r = np.where(available, rewards(quality, cost, cost_weight), -np.inf)
    best = r.max(axis=1, keepdims=True)
    tied = available & (r >= best - TIE)
    choice = np.where(tied, cost, np.inf).argmin(axis=1)
    return np.where(available.any(axis=1), choice, -1)


def regret_per_step(cumulative: np.ndarray, start: int = 0) -> float:
    """(R(n) − R(start)) / (n − start) from a cumulative regret curve R of shape (n,), R(0) = 0 before step 1."""
    n = len(cumulative)
    if n == 0 or start >= n:
        return float("nan")
    before = float(cumulative[start - 1]) if start > 0 else 0.0
    return (float(cumulative[-1]) - before) / (n - start)


def break_even_step(cumulative: np.ndarray) -> int | None:
    """The first step (1-based) from which the cumulative regret R stays ≤ 0; None when R ends above 0.

    `cumulative` has shape (n,). A stream that is never behind breaks even at step 1."""
    above = np.flatnonzero(cumulative > TIE)
    if above.size == 0:
        return 1
    last = int(above[-1])
    return None if last == len(cumulative) - 1 else last + 2


def fallback_order(blended_prices: Sequence[float]) -> np.ndarray:
    """Model columns from cheapest to dearest (the fallback of a fixed model that is unavailable)."""
    return np.argsort(np.asarray(blended_prices, dtype=np.float64), kind="stable")


def fixed_choice(available: np.ndarray, model: int, order: np.ndarray) -> np.ndarray:
    """Per step, `model` where available, else the first available model in `order`. (n, K) → (n,)."""
    first = np.where(available[:, order].any(axis=1), order[available[:, order].argmax(axis=1)], -1)
    return np.where(available[:, model], model, first)


def take(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """values[t, choice[t]] per step (NaN where choice is −1). (n, K), (n,) → (n,)."""
    out = values[np.arange(len(choice)), np.maximum(choice, 0)].astype(np.float64)
    return np.where(choice >= 0, out, np.nan)


def cumulative_regret(reference: np.ndarray, achieved: np.ndarray) -> np.ndarray:
    """Σ_{s ≤ t} (reference_s − achieved_s), steps where either is NaN count 0. (n,), (n,) → (n,)."""
    gap = reference - achieved
    return np.cumsum(np.where(np.isfinite(gap), gap, 0.0))


def model_shares(chosen: np.ndarray, n_models: int, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Share of each model per window of steps: (edges (n_windows + 1,), shares (n_windows, n_models))."""
    n = len(chosen)
    n_windows = max(1, min(n_windows, n))
    edges = np.linspace(0, n, n_windows + 1).astype(int)
    shares = np.zeros((n_windows, n_models))
    for w in range(n_windows):
        part = chosen[edges[w] : edges[w + 1]]
        part = part[part >= 0]
        if part.size:
            shares[w] = np.bincount(part, minlength=n_models)[:n_models] / part.size
    return edges, shares


def steps_until_share(
    hit: np.ndarray, start: int, window: int, threshold: float, *, above: bool = True, end: int | None = None
) -> int | None:
    """Steps after `start` until the share of `hit` in the next `window` steps is ≥ threshold (`above`) or
    ≤ threshold (not `above`); None when it never is before `end`. `hit`: (n,) bool."""
    end = len(hit) if end is None else min(end, len(hit))
    if end - start < window or window <= 0:
        return None
    csum = np.concatenate([[0], np.cumsum(hit.astype(np.int64))])
    share = (csum[start + window : end + 1] - csum[start : end + 1 - window]) / window
    ok = share >= threshold if above else share <= threshold
    idx = np.flatnonzero(ok)
    return int(idx[0]) if idx.size else None


# -- two models (RouteLLM) -------------------------------------------------------------------------------
def pgr(quality: float | np.ndarray, q_weak: float, q_strong: float) -> float | np.ndarray:
    """Performance gap recovered: (q − q_weak) / (q_strong − q_weak); NaN when the model called strong is not
    better (q_strong ≤ q_weak, in a seed where the better one on the mean is worse): there is no gap to recover, and
    a negative one would rank a higher quality as less recovered."""
    if not _has_gap(q_weak, q_strong):
        return np.full_like(np.asarray(quality, dtype=np.float64), np.nan)[()]
    return (quality - q_weak) / (q_strong - q_weak)


def _has_gap(q_weak: float, q_strong: float) -> bool:
    """Whether there is a quality gap to recover: PGR's denominator q_strong − q_weak is finite and > 0."""
    gap = q_strong - q_weak
    return gap > 0 and math.isfinite(gap)


def share_curve(
    shares: Floats, qualities: Floats, q_weak: float, q_strong: float, x_weak: float = 0.0, x_strong: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by x (strong-call share, or relative cost), with the anchors (x_weak, q_weak) and
    (x_strong, q_strong) added; one point per x (the best quality seen at it)."""
    s = np.concatenate([[x_weak], np.asarray(shares, dtype=np.float64), [x_strong]])
    q = np.concatenate([[q_weak], np.asarray(qualities, dtype=np.float64), [q_strong]])
    keep = np.isfinite(s) & np.isfinite(q)
    s, q = s[keep], q[keep]
    unique = np.unique(s)
    return unique, np.array([q[s == u].max() for u in unique])


def interpolate(shares: np.ndarray, qualities: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """The curve's quality at `at` (piecewise linear)."""
    return np.interp(at, shares, qualities)


def apgr(shares: Floats, qualities: Floats, q_weak: float, q_strong: float) -> float:
    """Average PGR at strong-call shares 10%, 20%, …, 100%."""
    s, q = share_curve(shares, qualities, q_weak, q_strong)
    return float(np.mean(pgr(interpolate(s, q, PGR_SHARES), q_weak, q_strong)))


def apgr_trapz(shares: Floats, qualities: Floats, q_weak: float, q_strong: float) -> float:
    """∫₀¹ PGR(s) ds by the trapezoid rule over the curve's points (RouteLLM's evaluate.py)."""
    s, q = share_curve(shares, qualities, q_weak, q_strong)
    from scipy import integrate

    return float(integrate.trapezoid(pgr(q, q_weak, q_strong), s))


def share_at_quality(shares: Floats, qualities: Floats, target: float) -> float | None:
    """The smallest share at which the piecewise-linear curve reaches `target` (None if it never does).
    `shares`/`qualities` must be sorted by share (as `share_curve` returns them)."""
    s, q = np.asarray(shares, dtype=np.float64), np.asarray(qualities, dtype=np.float64)
    if q.size == 0:
        return None
    if q[0] >= target - TIE:
        return float(s[0])
    for i in range(1, len(s)):
        if q[i] >= target - TIE:
            q0, q1 = q[i - 1], q[i]
            return float(s[i - 1] + (target - q0) / (q1 - q0) * (s[i] - s[i - 1]))
    return None


def cpt(shares: Floats, qualities: Floats, q_weak: float, q_strong: float, level: float) -> float | None:
    """Call-performance threshold: the smallest strong-call share with PGR ≥ `level` (e.g. 0.5 for CPT(50%)).

    None when the strong model is not better (q_strong ≤ q_weak): PGR is undefined there (`pgr`), and every level
    was "reached" at a share of 0. With a gap the curve reaches every level by its anchor (1, q_strong), so None
    means no gap."""
    if not _has_gap(q_weak, q_strong):
        return None
    s, q = share_curve(shares, qualities, q_weak, q_strong)
    return share_at_quality(s, q, q_weak + level * (q_strong - q_weak))


def strong_share_for_quality(
    shares: Floats, qualities: Floats, q_weak: float, q_strong: float, fraction: float = 0.95
) -> float | None:
    """The strong-call share needed to reach `fraction` of the strong model's quality."""
    s, q = share_curve(shares, qualities, q_weak, q_strong)
    return share_at_quality(s, q, fraction * q_strong)


def cost_share_for_quality(
    costs: Floats,
    qualities: Floats,
    c_weak: float,
    c_strong: float,
    q_weak: float,
    q_strong: float,
    fraction: float = 0.95,
) -> float | None:
    """The cost, relative to always calling the strong model, needed to reach `fraction` of its quality
    (1 − this is the cost saving that RouteLLM's "45% cost reduction at 95% of GPT-4's quality" states).
    None when the strong model costs nothing: there is no cost to save relative to it."""
    if not c_strong > 0:
        return None
    rel = np.asarray(costs, dtype=np.float64) / c_strong
    x, q = share_curve(rel, qualities, q_weak, q_strong, x_weak=c_weak / c_strong, x_strong=1.0)
    return share_at_quality(x, q, fraction * q_strong)


def oracle_share_curve(q_strong: np.ndarray, q_weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best quality reachable with each strong-call share (RouteLLM's `get_optimal_accuracy`): send the
    prompts with the largest gain q_strong − q_weak > 0 to the strong model. Inputs (n,); returns points
    (shares, qualities) of the piecewise-linear curve, flat once every gain is used."""
    n = len(q_strong)
    gains = np.sort((q_strong - q_weak)[q_strong - q_weak > 0])[::-1]
    shares = np.concatenate([[0.0], np.arange(1, gains.size + 1) / n])
    qualities = q_weak.mean() + np.concatenate([[0.0], np.cumsum(gains) / n])
    if shares[-1] < 1.0:
        shares, qualities = np.append(shares, 1.0), np.append(qualities, qualities[-1])
    return shares, qualities


# -- K models (RouterBench) ------------------------------------------------------------------------------
def upper_hull(points: np.ndarray) -> np.ndarray:
    """Non-decreasing upper convex hull of (cost, quality) points, shape (m, 2) → (h, 2), sorted by cost."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    if p.size == 0:
        return p
    p = p[np.lexsort((-p[:, 1], p[:, 0]))]
    hull: list[np.ndarray] = []
    for point in p:
        if hull and point[0] == hull[-1][0]:
            continue  # same cost, lower quality (sorted by quality descending within a cost)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) >= 0:
                hull.pop()  # hull[-1] lies on or under the segment hull[-2] → point
            else:
                break
        hull.append(point)
    h = np.array(hull)
    return h[: int(np.argmax(h[:, 1])) + 1]


def aiq(points: np.ndarray, c_max: float, c_min: float = 0.0) -> float:
    """Average improvement in quality: area under the non-decreasing hull, extended flat to `c_max` (and zero
    left of the router's cheapest point), divided by (c_max − c_min)."""
    hull = upper_hull(points)
    if hull.size == 0 or c_max <= c_min:
        return float("nan")
    xs, ys = hull[:, 0], hull[:, 1]
    if xs[0] >= c_max:
        return 0.0
    inside = xs < c_max
    xs, ys = np.append(xs[inside], c_max), np.append(ys[inside], np.interp(c_max, hull[:, 0], hull[:, 1]))
    from scipy import integrate

    return float(integrate.trapezoid(ys, xs) / (c_max - c_min))
