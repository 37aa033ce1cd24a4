"""The `default` policy: Thompson sampling on each model's mean quality, refined by prompt-level corrections
that are used only as far as they have predicted better.

Built to pay little while it learns from nothing (the regret a team sees in its first thousand requests)
and then to use the prompt where the data show it matters.

**Per-model mean (explored).** For model m with n_m feedbacks of total S_m, a Gaussian posterior on its mean
quality; the prior μ₀_m counts as n₀_m observations in the mean, and in its uncertainty as n₀_m observations of
the largest variance a quality in [0, 1] can have (v₀ = `prior_variance`, ¼):

    μ̂_m = (n₀_m μ₀_m + S_m)/(n₀_m + n_m),   sd_m = 1 / √(n₀_m/v₀ + n_m/σ_m²)

so a model without a catalog prior and without feedback (n₀_m = `similar_strength` = 1: sd 0.5, and β·s·sd =
1.28 at the defaults, more than any gap between qualities in [0, 1]) is never confidently dominated on quality,
only by its price, whatever its similar models have shown (with a catalog prior of strength 2, β·s·sd = 0.90:
only a prior mean below 0.1 could be cut before the first feedback; a prior that borrowed the noise of its own
mean made a model whose family started with a few zeros look certain to be poor: μ₀ = 0, sd 0.1, never tried).
The two are not one conjugate posterior: with the prior N(μ₀_m, v₀/n₀_m) and noise σ_m² the sd is this one, but
the mean would weigh the prior as n₀_m·σ_m²/v₀ ≤ n₀_m observations; the pseudo-count mean (as before the sd
changed) pulls a little harder toward μ₀_m over a model's first feedbacks.

σ_m² = (ν₀·v + SS_m)/(ν₀ + n_m) is the model's own variance of quality (SS_m = Σ (q − q̄_m)²) shrunk toward
v = ¼ (`noise_prior`), the largest variance a quality in [0, 1] can have, worth ν₀ = `noise_strength`
observations; a model's noise is not borrowed from the others, whose means differ. So exploration is scaled
to the noise actually seen once there is data to see it (0/1 qualities near 0.9 need fewer trials than those
near 0.5), and not before: shrunk toward μ̂_m(1 − μ̂_m) instead (`noise_prior = 0`, the first version), one
success (μ̂ = 1) made a model look noiseless (sd 0.094 after one feedback) and one early failure of the best
model could leave it untried for thousands of requests.

**Priors** (μ₀_m, n₀_m): the catalog's `prior_quality` / `prior_strength` when given; otherwise the mean
quality the other models of its family (else tier, else all models) have shown, worth `similar_strength`
observations; 0.5 before any feedback. They are refreshed as the others learn.

**Prompt-level corrections (exploited, shrunk).** Per model and per shrinkage level κ_l ∈ κ·{1, 4, 16}
(κ = `shrinkage`), a ridge regression of the residual r = q − q̄_m (the deviation from the model's own mean
quality so far: unbiased, where q − μ̂_m would carry the prior's early pull into the corrections for good)
on the dense features φ (`features.dense_vector`): w_ml = (κ_l I + Σ φφᵀ)⁻¹ Σ rφ, summed over the model's
feedbacks after its first (there is no mean to deviate from before it; Sherman–Morrison, O(d²) per feedback).
A correction counts only as far as a difference of two qualities in [0, 1] can go: c_ml(φ) = clip(w_mlᵀφ, −1, 1)
(never further from q − μ̂_m, which is in [−1, 1], than w_mlᵀφ; the same value wherever |w_mlᵀφ| ≤ 1). Before each
update every prediction is scored one step ahead; the log Bayes factor of level l against "no correction" under
N(·, σ_m²) accumulates

    L_ml += ((q − μ̂_m)² − (q − μ̂_m − c_ml(φ))²) / (2σ_m²)

(so one feedback takes at most 4/(2σ_m²) from it: a request far outside what w was fitted on, a caller's context
number of 10³⁰⁰ with φ's slot at 690, took 10⁵ unclipped, and the corrections were off for millions of requests),
and the model's estimate for a request is the Bayesian model average

    q̂_m(φ) = μ̂_m + Σ_l ω_ml·c_ml(φ),     ω_ml = e^{L_ml} / (e^{E} + Σ_l' e^{L_ml'}),   E = `evidence`

(E: prior log-odds for "no correction"): the per-model mean until corrections have predicted better on
feedback they had not seen (the prequential principle; Dawid 1984), then the corrections at the shrinkage
the data support. Corrections are not explored: hashed word features make every prompt new, and
exploring their uncertainty explores forever.

**Choice.** Thompson sampling (Thompson 1933; Russo et al. 2018) on the score q̃_m − penalty_m with q̃_m ~
N(q̂_m(φ), (s·sd_m)²), s = `exploration`. The pmf of the argmax is computed by quadrature
(`exploration.gaussian_argmax_pmf`, `nodes` Gauss–Hermite points per model; with 16 within ≈ 0.01 of the exact
Thompson probabilities, off most where a wide posterior meets a narrow one: `tests/test_default_reference.py`),
not from a handful of draws, and the logged probability is exactly the one the router drew with, small ones
included. A model whose optimistic score (q̂_m(φ) − penalty_m + β·s·sd_m, in the draws' sd) is below another's
pessimistic score (q̂ − penalty − β·s·sd) at this request's λ is confidently dominated and gets probability 0
(β = `dominance`; it would have beaten that other model in fewer than Φ(−β) = 0.13% of the draws). With
`sampler=ids` the same posterior goes through information-directed sampling instead (`exploration.ids_pmf`):
explore a model only as far as what its outcome would tell about which model is best is worth its expected regret.

**Cold start.** No fixed forced-exploration count: an untried model's wide prior makes it likely to be drawn a
few times, and a model that looks poor after those is left alone. A model added at run time gets the floor
`floor·u_m` (`cold_start_floors`), u_m = sd of μ_m ÷ its prior sd = sd_m·√(n₀/v₀) = 1/√(1 + n_m·v₀/(n₀·σ_m²)),
while u_m > `floor_until` and it is not confidently dominated (here in the posterior's own sd: its score +
β·sd_m below another's score − β·sd, a looser cut than the pmf's β·s·sd_m, so a new model can keep its floor for
a few requests after the pmf has given it 0): tried at once (u = 1), less as it becomes known, and not at all
once it is known to be poor. A model whose answers look steady (small σ_m²) is known after fewer feedbacks; a
surprise that raises σ_m² can raise u_m again. A strong catalog prior (large n₀) keeps the floor on for longer:
u_m > `floor_until` while n_m < (1/floor_until² − 1)·n₀·σ_m²/v₀, ≈ 10·n₀·σ_m²/v₀ feedbacks, unless the model is
dominated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exploration
from ..catalog import ModelSpec
from ..features import dense_vector
from ..types import Context
from .base import BasePolicy

# Why a private numpy name: `np.einsum(..., optimize=False)` (its default) is a Python wrapper that checks its arguments
# and then calls `numpy._core.multiarray.c_einsum`; calling that directly saves the wrapper (≈ 1 µs), the same values.
# A numpy without the private name (1.x) falls back to the wrapper with `optimize=False`, the same C routine, not a
# contraction path that could round otherwise (`tests/test_default_policy.py` checks the fallback's decisions).
try:
    from numpy._core.multiarray import c_einsum
except ImportError:
    c_einsum = functools.partial(np.einsum, optimize=False)

LEVELS = 3
"""Shrinkage levels of the corrections: κ·LEVEL_SCALE^l, l = 0 … LEVELS − 1."""
LEVEL_SCALE = 4.0
MAX_VARIANCE = 0.25
"""The largest variance of a quality in [0, 1]."""
MIN_VARIANCE = 0.01
"""The least noise variance assumed a priori (a model whose quality looks constant is still checked)."""
UNINFORMED_QUALITY = 0.5
SAMPLERS = ("thompson", "ids")
MAX_MODEL_LISTS = 64
"""Model lists (requests' `models` subsets) whose posterior rows are kept between two updates."""


@dataclass(frozen=True)
class HierarchicalParams:
    """Settings of the `default` policy (see the module docstring for the math)."""

    exploration: float = 0.85
    """s: scale of the Thompson draws' standard deviation (1 = the posterior's). The defaults of `exploration`,
    `evidence` and `shrinkage` were chosen on tuning sets only (experiments/learning-efficiency/tune.py)."""
    similar_strength: float = 1.0
    """n₀ for a model without a catalog prior: how many observations the similar models' mean is worth."""
    noise_strength: float = 10.0
    """ν₀: how many observations the noise prior v (`noise_prior`) is worth in each model's σ_m²."""
    dim: int = 64
    """Dense feature dimensions of the corrections (`features.dense_vector`)."""
    shrinkage: float = 1.0
    """κ: the weakest of the corrections' three prior precisions κ·{1, 4, 16} (larger = more shrinkage)."""
    evidence: float = 2.0
    """Prior log-odds against the corrections: how much better they must have predicted before they count."""
    dominance: float = 3.0
    """β: a model whose score + β·s·sd is below another's score − β·s·sd gets probability 0 (s·sd: the Thompson
    draws' sd; the floors of models added at run time end at β·sd)."""
    floor: float = 0.1
    """Largest exploration floor of a model added at run time."""
    floor_until: float = 0.3
    """The floor ends once the model's posterior sd falls below this share of its prior sd."""
    nodes: int = 16
    """Gauss–Hermite nodes per model of the argmax pmf's integration grid (`exploration.gaussian_argmax_pmf`)."""
    sampler: str = "thompson"
    """How the scores' posterior becomes a pmf: `thompson` (the argmax's pmf) or `ids` (variance-based
    information-directed sampling from `draws` posterior draws of the router's rng, `exploration.ids_pmf`; best
    on the tuning sets with `exploration=1.2`; tried as the default and not adopted, its route costs ≈ 40 µs
    more: experiments/learning-efficiency/README.md)."""
    draws: int = 256
    """`ids` only: posterior draws per request."""
    prior_variance: float = MAX_VARIANCE
    """v₀: the variance of each of the prior's n₀ pseudo-observations in the posterior sd of a model's mean (module
    docstring). ¼, the largest a quality in [0, 1] can have: the prior is never more certain than that many
    feedbacks could make it. Checked on the tuning sets (experiments/learning-efficiency/results/tuning-prior.md)."""
    noise_prior: float = MAX_VARIANCE
    """v: the variance σ_m²'s ν₀ pseudo-observations have (¼, the largest of any quality in [0, 1]), so that an
    extreme mean after a few feedbacks (one success: μ̂ = 1) does not make a model look noiseless; 0 = μ̂(1 − μ̂),
    the largest a quality with the model's current mean can have (clipped to [0.01, ¼]; the first version).
    Chosen on the tuning sets (experiments/learning-efficiency/results/tuning-noise.md)."""
    mix: float = 0.02
    """`ids` only: share of the pmf spread evenly over the models not confidently dominated (so that off-policy
    estimates can weigh every model that may still be best)."""

    def __post_init__(self) -> None:
        if not 32 <= self.dim <= 1024:
            raise ValueError("dim must be in [32, 1024]")
        if min(self.shrinkage, self.similar_strength, self.noise_strength, self.exploration, self.dominance) <= 0:
            raise ValueError("shrinkage, similar_strength, noise_strength, exploration and dominance must be > 0")
        if not 0.0 <= self.floor <= 0.5 or not 0.0 < self.floor_until <= 1.0:
            raise ValueError("floor must be in [0, 0.5] and floor_until in (0, 1]")
        if not 4 <= self.nodes <= 128:
            raise ValueError("nodes must be in [4, 128]")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}")
        if self.noise_prior != 0.0 and not MIN_VARIANCE <= self.noise_prior <= MAX_VARIANCE:
            raise ValueError("noise_prior must be 0 (μ̂(1 − μ̂)) or in [0.01, 0.25]")
        if not 0.0 < self.prior_variance <= 1.0:
            raise ValueError("prior_variance must be in (0, 1]")
        if not 0.0 <= self.mix <= 0.5 or not 16 <= self.draws <= 65536:
            raise ValueError("mix must be in [0, 0.5] and draws in [16, 65536]")


def q_hat(phi: np.ndarray, base: np.ndarray, omega: np.ndarray, w: np.ndarray) -> np.ndarray:
    """q̂_m(φ) = μ̂_m + Σ_l ω_ml·c_ml(φ), c_ml(φ) = clip(w_ml·φ, −1, 1) (`predict`; `corrections_kernel.checked`'s
    reference). The clip as two ufuncs in place: np.clip's wrappers cost more than the matmul here (performance.md)."""
    corrections = w @ phi  # (K, L)
    np.minimum(corrections, 1.0, out=corrections)
    np.maximum(corrections, -1.0, out=corrections)
    return np.asarray(base + c_einsum("kl,kl->k", omega, corrections))


class _Arms:
    """The per-model posteriors as arrays with one row per model (so one product scores every model).

    Per row: `n`, `sum_q`, `sum_q2` (the per-model mean's data), `prior_n` = n₀, `prior_mean` = μ₀ (refreshed by
    the policy), `catalog_prior` (NaN when the catalog gives none), `family` and `tier` ids (−1 when untagged);
    per shrinkage level l, the corrections' `a_inv` = (κ_l I + Σφφᵀ)⁻¹ (L × d × d), `b` = Σ rφ, `w` = a_inv·b
    (L × d each) and `evidence` = L_ml (L).
    """

    ARRAYS = (
        "n", "sum_q", "sum_q2", "prior_n", "prior_mean", "catalog_prior", "family", "tier",
        "a_inv", "b", "w", "evidence",
    )  # fmt: skip
    INTEGER = ("family", "tier")

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.row: dict[str, int] = {}
        self.groups: dict[str, int] = {}
        self.n, self.sum_q, self.sum_q2 = np.zeros(0), np.zeros(0), np.zeros(0)
        self.prior_n, self.prior_mean, self.catalog_prior = np.zeros(0), np.zeros(0), np.zeros(0)
        self.family, self.tier = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
        self.a_inv = np.zeros((0, LEVELS, dim, dim))
        self.b, self.w = np.zeros((0, LEVELS, dim)), np.zeros((0, LEVELS, dim))
        self.evidence = np.zeros((0, LEVELS))

    def _group(self, key: str, value: str) -> int:
        return self.groups.setdefault(f"{key}={value}", len(self.groups)) if value else -1

    def add(self, specs: Sequence[tuple[ModelSpec, float]], kappa: float) -> None:
        """Rows for `specs` (each with its n₀; one at least), in their order, each array copied once for them all (a
        model at a time, a first route over 100 models copied them 100 times, O(K²): 0.4–0.8 s of the event loop)."""
        k, d, start = len(specs), self.dim, len(self.n)
        groups = np.array([(self._group("family", s.family), self._group("tier", s.tier)) for s, _ in specs], np.intp)
        self.row.update((spec.name, start + i) for i, (spec, _) in enumerate(specs))
        for key in ("n", "sum_q", "sum_q2", "b", "w", "evidence"):  # zeros: no data yet
            setattr(self, key, np.concatenate([getattr(self, key), np.zeros((k, *getattr(self, key).shape[1:]))]))
        self.prior_n = np.concatenate([self.prior_n, np.array([n0 for _, n0 in specs], np.float64)])
        self.prior_mean = np.concatenate([self.prior_mean, np.full(k, UNINFORMED_QUALITY)])
        self.catalog_prior = np.concatenate([self.catalog_prior, np.array([s.prior_quality for s, _ in specs], float)])
        self.family, self.tier = np.concatenate([self.family, groups[:, 0]]), np.concatenate([self.tier, groups[:, 1]])
        inv = np.stack([np.eye(d) / (kappa * LEVEL_SCALE**level) for level in range(LEVELS)])
        self.a_inv = np.concatenate([self.a_inv, np.broadcast_to(inv, (k, LEVELS, d, d))])

    def mean(self) -> np.ndarray:
        """μ̂ per row."""
        return (self.prior_n * self.prior_mean + self.sum_q) / (self.prior_n + self.n)

    def squares(self) -> np.ndarray:
        """SS_m = Σ (q − q̄_m)² per row."""
        return np.maximum(self.sum_q2 - self.sum_q**2 / np.maximum(self.n, 1.0), 0.0)

    def state(self) -> dict[str, Any]:
        return {"names": list(self.row), "groups": list(self.groups), **{k: getattr(self, k) for k in self.ARRAYS}}

    def load(self, state: dict[str, Any]) -> None:
        self.row = {str(name): i for i, name in enumerate(state["names"])}
        self.groups = {str(g): i for i, g in enumerate(state["groups"])}
        for key in self.ARRAYS:
            setattr(self, key, np.array(state[key], dtype=np.intp if key in self.INTEGER else np.float64))
        k = len(self.row)
        self.a_inv = self.a_inv.reshape(k, LEVELS, self.dim, self.dim)
        self.b = self.b.reshape(k, LEVELS, self.dim)
        self.w = self.w.reshape(k, LEVELS, self.dim)
        self.evidence = self.evidence.reshape(k, LEVELS)


def _peer_sums(values: np.ndarray, family: np.ndarray, tier: np.ndarray) -> np.ndarray:
    """(3, K): [level, m] = the sum of `values` over the other models (m' ≠ m) that share m's family (level 0), its
    tier (1), or of all other models (2); 0 for an untagged model's family or tier. One sum per group, then less the
    model's own: O(K) time and memory where a (3, K, K) matrix of peers made every update's priors cost O(K²), and
    the retired models stay rows (1,128 rows: 150 ms a route after each update)."""
    out = np.empty((3, len(values)))
    for level, group in enumerate((family, tier)):
        tagged = group >= 0
        ids = np.where(tagged, group, 0)
        totals = np.bincount(ids, weights=np.where(tagged, values, 0.0), minlength=1)
        out[level] = np.where(tagged, totals[ids] - values, 0.0)
    out[2] = values.sum() - values
    return out


def _peers_of(row: int, family: np.ndarray, tier: np.ndarray) -> list[np.ndarray]:
    """The other models that share `row`'s family, its tier, and all other models: three boolean masks."""
    others = np.arange(len(family)) != row
    return [others & (g == g[row]) & (g[row] >= 0) for g in (family, tier)] + [others]


_NO_FLOORS: dict[int, np.ndarray] = {}


def _no_floors(k: int) -> np.ndarray:
    """Zeros of shape (k,), read-only and shared (the floors while no model was added at run time)."""
    zeros = _NO_FLOORS.get(k)
    if zeros is None:
        zeros = _NO_FLOORS[k] = np.zeros(k)
        zeros.setflags(write=False)
    return zeros


class HierarchicalThompsonPolicy(BasePolicy):
    """Thompson sampling on per-model mean quality, refined by prompt-level corrections once they have
    predicted better (`default`)."""

    explores = True
    Params = HierarchicalParams

    def __init__(self, params: HierarchicalParams | None = None, *, name: str = "default") -> None:
        self.params = params or HierarchicalParams()
        self.name = name
        self._arms = _Arms(self.params.dim)
        self._added: set[str] = set()
        self._cached: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._by_models: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._last_models: tuple[tuple[ModelSpec, ...] | None, tuple[np.ndarray, ...]] = (None, ())
        """The last model tuple `_posterior_of` saw and its entry (the router passes the same tuple every route)."""
        self._phi_of: tuple[Context | None, np.ndarray] = (None, np.zeros(0))
        self._scaled_sd: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros(0))
        self._fused: Any = None  # `corrections_kernel.corrected_means` once `warm_up` has checked it

    def warm_up(self) -> None:  # `Router` calls it (not `Settings.check`): the first pmf's compiled quadrature, and
        if self.params.sampler == "thompson":  # `predict`'s compiled corrections where they equal numpy's here
            exploration.load_kernel()
            from .. import corrections_kernel as kernel
            self._fused = kernel.corrected_means if kernel.checked(self.params.dim) else None

    # -- posteriors -----------------------------------------------------------------------------------------
    def _rows(self, models: Sequence[ModelSpec]) -> np.ndarray:
        row = self._arms.row
        if any(m.name not in row for m in models):
            new: dict[str, tuple[ModelSpec, float]] = {}  # in their order (a name listed twice: its first spec)
            for m in models:
                if m.name not in row and m.name not in new:
                    strength = m.prior_strength if m.prior_quality is not None else None
                    new[m.name] = (m, strength or self.params.similar_strength)
            self._arms.add(list(new.values()), self.params.shrinkage)
            self._cached = None
        return np.fromiter((row[m.name] for m in models), dtype=np.intp, count=len(models))

    def _refresh_priors(self) -> None:
        """μ₀ of every model: its catalog prior, else the mean quality that the other models of its family
        (else its tier, else all other models) have shown; 0.5 before any of them has feedback."""
        arms = self._arms
        others_n = _peer_sums(arms.n, arms.family, arms.tier)  # (3 levels, K): data of the other models of the group
        others_s = _peer_sums(arms.sum_q, arms.family, arms.tier)
        has = others_n > 0
        level = np.argmax(has, axis=0)  # the first level with data
        k = np.arange(len(arms.n))
        found = has[level, k]
        mean = np.where(found, others_s[level, k] / np.where(found, others_n[level, k], 1.0), UNINFORMED_QUALITY)
        arms.prior_mean = np.where(np.isnan(arms.catalog_prior), mean, arms.catalog_prior)

    def _noise_variance(self, mean: np.ndarray) -> np.ndarray:
        """σ_m² per row (module docstring), given μ̂ per row."""
        nu, arms = self.params.noise_strength, self._arms
        if self.params.noise_prior > 0:
            bound = np.full_like(mean, self.params.noise_prior)
        else:
            bound = np.clip(mean * (1.0 - mean), MIN_VARIANCE, MAX_VARIANCE)
        return np.asarray((nu * bound + arms.squares()) / (nu + arms.n))

    def _phi(self, context: Context) -> np.ndarray:
        """φ = dense_vector(context); the last one is kept, since `update` usually follows `pmf` on it."""
        if self._phi_of[0] is not context:
            self._phi_of = (context, dense_vector(context, self.params.dim))
        return self._phi_of[1]

    def _before_update(self, row: int) -> tuple[float, float]:
        """(μ̂, σ²) of one model, as `_summary` gives them, without computing them for every model. What is learned
        takes only this path (never the cache, and sums that do not depend on the order of the rows), so a replay
        of the same feedback gives the same state bit for bit, whenever routes came and whichever models they saw."""
        arms = self._arms
        prior = float(arms.catalog_prior[row])
        if math.isnan(prior):
            prior = UNINFORMED_QUALITY
            for peers in _peers_of(row, arms.family, arms.tier):
                n = math.fsum(arms.n[peers])  # exactly rounded: the same whatever the order of the rows
                if n > 0:
                    prior = math.fsum(arms.sum_q[peers]) / n
                    break
        n0, n = float(arms.prior_n[row]), float(arms.n[row])
        mean = (n0 * prior + float(arms.sum_q[row])) / (n0 + n)
        nu = self.params.noise_strength
        bound = self.params.noise_prior or min(max(mean * (1.0 - mean), MIN_VARIANCE), MAX_VARIANCE)
        return mean, (nu * bound + float(arms.squares()[row])) / (nu + n)

    def _summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per model, what does not depend on the prompt: (μ̂, σ², sd of μ̂, ω of shape (K, LEVELS)); computed
        once after each update (priors refreshed) and shared by the routes until the next one."""
        if self._cached is None:
            self._refresh_priors()
            arms = self._arms
            mean = arms.mean()
            variance = self._noise_variance(mean)
            logits = np.concatenate([np.full((len(arms.n), 1), self.params.evidence), arms.evidence], axis=1)
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            omega = weights[:, 1:] / weights.sum(axis=1, keepdims=True)
            sd = 1.0 / np.sqrt(arms.prior_n / self.params.prior_variance + arms.n / variance)
            self._cached = (mean, variance, sd, omega)
            self._by_models = {}
            self._last_models = (None, ())
        return self._cached

    def _posterior_of(self, models: Sequence[ModelSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`_summary`'s (μ̂, sd, ω) and the corrections w for the rows of `models`, in their order: what a route
        needs that depends only on the posterior, gathered once per update and model list (not per request)."""
        last = self._last_models
        if last[0] is models and self._cached is not None:  # the same (immutable) tuple as the last route
            base, sd, omega, w = last[1]
            return base, sd, omega, w
        key = tuple(m.name for m in models)
        found = self._by_models.get(key) if self._cached is not None else None
        if found is None:
            rows = self._rows(models)
            base, _, sd, omega = self._summary()
            if len(self._by_models) >= MAX_MODEL_LISTS:
                self._by_models.clear()
            found = (base[rows], sd[rows], omega[rows], self._arms.w[rows])
            for array in found:
                array.setflags(write=False)  # shared by every route until the next update
            self._by_models[key] = found
        if type(models) is tuple:
            self._last_models = (models, found)
        return found

    def predict(self, context: Context, models: Sequence[ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
        """q̂_m(φ) and the posterior sd of the model's mean quality, each shape (len(models),)."""
        base, sd, omega, w = self._posterior_of(models)
        if self._fused is not None and (found := self._fused(context.features, base, omega, w, self.params.dim)):
            self._phi_of = (context, found[0])  # φ and q̂ in one compiled call: `q_hat`'s values, bit for bit
            return found[1], sd
        return q_hat(self._phi(context), base, omega, w), sd

    # -- the policy protocol --------------------------------------------------------------------------------
    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        mean, sd = self.predict(context, models)
        p, scaled = self.params, self._scaled_sd
        if scaled[0] is not sd:  # s·sd changes with the posterior only (`_posterior_of` caches sd per update)
            scaled = self._scaled_sd = (sd, p.exploration * sd)
        if p.sampler == "ids":
            return exploration.ids_pmf(mean - penalty, scaled[1], rng, p.draws, p.dominance, p.mix)
        return exploration.gaussian_argmax_pmf(mean - penalty, scaled[1], p.dominance, p.nodes)

    @property
    def stacks_pmfs(self) -> bool:
        """Whether `pmfs` may stand for one `pmf` per request: with the Thompson quadrature (no generator), not
        with `sampler=ids`, whose pmf draws from the router's generator between the router's own draws."""
        return self.params.sampler == "thompson"

    def pmfs(self, requests: Sequence[tuple[Context, Sequence[ModelSpec], np.ndarray]]) -> list[np.ndarray]:
        """`pmf` of each (context, models, penalty), the same values bit for bit, the quadratures in one
        call (`exploration.gaussian_argmax_pmfs`; `Router.route_many`; only while `stacks_pmfs`)."""
        p = self.params
        if not self.stacks_pmfs:
            raise ValueError("pmfs: the ids sampler draws from the router's generator; use pmf per request")
        means, sds = [], []
        for context, models, penalty in requests:
            mean, sd = self.predict(context, models)
            scaled = self._scaled_sd
            if scaled[0] is not sd:
                scaled = self._scaled_sd = (sd, p.exploration * sd)
            means.append(mean - penalty)
            sds.append(scaled[1])
        return exploration.gaussian_argmax_pmfs(means, sds, p.dominance, p.nodes)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        arms = self._arms
        row = int(self._rows([model])[0])
        phi = self._phi(context)
        q = float(quality)
        mean, variance = self._before_update(row)
        predicted = arms.w[row] @ phi  # (L,)
        correction = np.maximum(np.minimum(predicted, 1.0), -1.0)  # c_ml(φ), as `predict` computes it
        arms.evidence[row] += ((q - mean) ** 2 - (q - mean - correction) ** 2) / (2.0 * variance)
        n = float(arms.n[row])
        if n > 0:  # the corrections learn the deviation from the model's own mean so far (none before it has one)
            residual = q - float(arms.sum_q[row]) / n
            a_inv = arms.a_inv[row]  # (L, d, d), updated in place
            v = a_inv @ phi
            gain = v / (1.0 + v @ phi)[:, None]  # A_new⁻¹φ
            np.subtract(a_inv, gain[:, :, None] * v[:, None, :], out=a_inv)  # Sherman–Morrison
            arms.b[row] += residual * phi
            arms.w[row] += gain * (residual - predicted)[:, None]  # recursive least squares: w = A⁻¹b
        arms.n[row] += 1.0
        arms.sum_q[row] += q
        arms.sum_q2[row] += q * q
        self._cached = None

    def add_model(self, spec: ModelSpec, similar: Sequence[ModelSpec]) -> None:
        if spec.name not in self._arms.row:
            self._added.add(spec.name)
            self._rows([spec])

    def cold_start_floors(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray
    ) -> np.ndarray | None:
        """`floor·u_m` for models added at run time while u_m = sd_m·√(n₀/v₀) (its sd ÷ its prior sd) > `floor_until`
        and the model is not confidently dominated in its posterior sd (score + β·sd_m ≥ every score − β·sd); 0
        otherwise."""
        added = self._added
        if not added or not any(m.name in added for m in models):
            return _no_floors(len(models))
        fresh = np.array([m.name in added for m in models])
        p, arms, rows = self.params, self._arms, self._rows(models)
        mean, sd = self.predict(context, models)
        u = sd * np.sqrt(arms.prior_n[rows] / p.prior_variance)
        score = mean - penalty
        dominated = score + p.dominance * sd < np.max(score - p.dominance * sd)
        return np.where(fresh & (u > p.floor_until) & ~dominated, p.floor * u, 0.0)

    def state(self) -> dict[str, Any]:
        return {"arms": self._arms.state(), "added": sorted(self._added)}

    def load(self, state: dict[str, Any]) -> None:
        self._arms = _Arms(self.params.dim)
        self._arms.load(state["arms"])
        self._cached = None
        self._phi_of = (None, np.zeros(0))
        self._added = {str(n) for n in state["added"]}

    def weights(self) -> np.ndarray:
        """Per model with feedback (sorted by name): μ̂, the evidences L_ml and the corrections w_ml, flat. Models
        without feedback hold only their prior, so a policy that has merely seen more of them compares equal."""
        arms = self._arms
        rows = [arms.row[name] for name in sorted(arms.row) if arms.n[arms.row[name]] > 0]
        parts = [np.concatenate([[self._before_update(r)[0]], arms.evidence[r], arms.w[r].ravel()]) for r in rows]
        return np.concatenate(parts) if parts else np.zeros(0)
