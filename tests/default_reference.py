"""A slow, plain transcription of the `default` policy's documented math (`bandit_router/policies/hierarchical.py`'s
module docstring, `bandit_router/exploration.py`, `features.dense_vector`), to check the fast code against.

Every quantity is recomputed from the kept history of (quality, φ) per model with loops and `np.linalg.solve`; no
Sherman–Morrison, no caches, no arrays of rows. Only the evidence L_ml is accumulated online, as the docstring
defines it (each feedback scored one step ahead, with the posterior as it stood then). The Thompson pmf is an
independent integral on a fine uniform grid (`thompson_pmf`), not the policy's Gauss–Hermite quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from bandit_router.catalog import ModelSpec
from bandit_router.policies.hierarchical import HierarchicalParams
from bandit_router.types import Context

LEVELS = 3
LEVEL_SCALE = 4.0
UNINFORMED = 0.5


def clipped(correction: float) -> float:
    """A correction as far as a difference of two qualities in [0, 1] can go: within [−1, 1]."""
    return min(max(float(correction), -1.0), 1.0)


def dense(context: Context, dim: int) -> np.ndarray:
    """φ: slot 0 = 1 (bias); the words' hashes mod (dim − 16) into slots 16…; the other namespaces' mod 15 into 1…15."""
    phi = np.zeros(dim)
    phi[0] = 1.0
    for namespace, (indices, values) in context.features.items():
        for i, v in zip(indices.tolist(), values.tolist(), strict=True):
            if namespace == "w":
                phi[16 + i % (dim - 16)] += v
            else:
                phi[1 + i % 15] += v
    return phi


@dataclass
class _Model:
    spec: ModelSpec
    added: bool = False
    qualities: list[float] = field(default_factory=list)
    phis: list[np.ndarray] = field(default_factory=list)
    evidence: list[float] = field(default_factory=lambda: [0.0] * LEVELS)


@dataclass(frozen=True)
class Posterior:
    """One model's posterior, as the docstring defines it."""

    mean: float  # μ̂_m
    noise: float  # σ_m²
    sd: float  # sd_m
    prior_mean: float  # μ₀_m
    prior_n: float  # n₀_m
    weights: np.ndarray  # w_ml, (L, d)
    omega: np.ndarray  # ω_ml, (L,)


class ReferenceDefault:
    """The `default` policy's math, slowly. `models` are registered in the order they are first seen."""

    def __init__(self, params: HierarchicalParams) -> None:
        self.p = params
        self.models: dict[str, _Model] = {}
        self._ridges: dict[tuple[str, int, int], np.ndarray] = {}
        """w per (model, feedbacks, level): the history only grows, so a solved one stays right."""

    def see(self, spec: ModelSpec, *, added: bool = False) -> None:
        if spec.name not in self.models:
            self.models[spec.name] = _Model(spec, added=added)

    # -- the per-model posterior --------------------------------------------------------------------------
    def prior(self, name: str) -> tuple[float, float]:
        """(μ₀, n₀): the catalog's prior; else the pooled mean quality of the other models of the family, else
        of the tier, else of all other models (the first of these groups that has feedback), worth
        `similar_strength`; 0.5 before any feedback."""
        spec = self.models[name].spec
        if spec.prior_quality is not None:
            return float(spec.prior_quality), float(spec.prior_strength or self.p.similar_strength)
        others = [m for other, m in self.models.items() if other != name]
        groups = [
            [m for m in others if spec.family and m.spec.family == spec.family],
            [m for m in others if spec.tier and m.spec.tier == spec.tier],
            others,
        ]
        for group in groups:
            n = sum(len(m.qualities) for m in group)
            if n > 0:
                return sum(sum(m.qualities) for m in group) / n, self.p.similar_strength
        return UNINFORMED, self.p.similar_strength

    def posterior(self, name: str) -> Posterior:
        p = self.p
        model = self.models[name]
        q = model.qualities
        n = len(q)
        mu0, n0 = self.prior(name)
        mean = (n0 * mu0 + sum(q)) / (n0 + n)
        average = sum(q) / n if n else 0.0
        squares = sum((x - average) ** 2 for x in q)
        bound = p.noise_prior if p.noise_prior > 0 else min(max(mean * (1 - mean), 0.01), 0.25)
        noise = (p.noise_strength * bound + squares) / (p.noise_strength + n)
        sd = 1.0 / math.sqrt(n0 / p.prior_variance + n / noise)
        weights = np.stack([self._ridge(model, level) for level in range(LEVELS)])
        logits = [p.evidence, *model.evidence]
        top = max(logits)
        exps = [math.exp(x - top) for x in logits]
        omega = np.array(exps[1:]) / sum(exps)
        return Posterior(mean, noise, sd, mu0, n0, weights, omega)

    def _ridge(self, model: _Model, level: int) -> np.ndarray:
        """w = (κ_l I + Σφφᵀ)⁻¹ Σ rφ, κ_l = κ·4^l, over the model's feedbacks after its first, r = q − (mean of the
        qualities before it)."""
        key = (model.spec.name, len(model.qualities), level)
        if key in self._ridges:
            return self._ridges[key]
        d = self.p.dim
        kappa = self.p.shrinkage * LEVEL_SCALE**level
        a = kappa * np.eye(d)
        b = np.zeros(d)
        for i in range(1, len(model.qualities)):
            phi = model.phis[i]
            residual = model.qualities[i] - sum(model.qualities[:i]) / i
            a += np.outer(phi, phi)
            b += residual * phi
        w = self._ridges[key] = np.linalg.solve(a, b)
        return w

    def estimate(self, context: Context, name: str) -> tuple[float, float]:
        """(q̂_m(φ), sd_m): q̂ = μ̂ + Σ_l ω_l·clip(w_lᵀφ, −1, 1)."""
        post = self.posterior(name)
        phi = dense(context, self.p.dim)
        correction = sum(post.omega[level] * clipped(post.weights[level] @ phi) for level in range(LEVELS))
        return post.mean + float(correction), post.sd

    def update(self, context: Context, spec: ModelSpec, quality: float) -> None:
        """Score every level's prediction one step ahead, then add the feedback to the history."""
        self.see(spec)
        post = self.posterior(spec.name)
        phi = dense(context, self.p.dim)
        model = self.models[spec.name]
        for level in range(LEVELS):
            correction = clipped(post.weights[level] @ phi)
            model.evidence[level] += ((quality - post.mean) ** 2 - (quality - post.mean - correction) ** 2) / (
                2 * post.noise
            )
        model.qualities.append(float(quality))
        model.phis.append(phi)

    # -- the choice -------------------------------------------------------------------------------------------
    def scores(
        self, context: Context, specs: Sequence[ModelSpec], penalty: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q̂_m(φ) − penalty_m, sd_m) per model."""
        for s in specs:
            self.see(s)
        pairs = [self.estimate(context, s.name) for s in specs]
        return np.array([m for m, _ in pairs]) - penalty, np.array([sd for _, sd in pairs])

    def pmf(
        self, context: Context, specs: Sequence[ModelSpec], penalty: np.ndarray, *, dominance_sd_scale: float
    ) -> np.ndarray:
        """Thompson sampling on N(score_m, (s·sd_m)²); the models with score + β·c·sd below another's
        score − β·c·sd get 0 (c = `dominance_sd_scale`: which sd the dominance cut uses)."""
        score, sd = self.scores(context, specs, penalty)
        spread = self.p.dominance * dominance_sd_scale * sd
        alive = [a for a in range(len(specs)) if score[a] + spread[a] >= max(score - spread) - 1e-12]
        out = np.zeros(len(specs))
        out[alive] = thompson_pmf(score[alive], self.p.exploration * sd[alive])
        return out

    def floors(self, context: Context, specs: Sequence[ModelSpec], penalty: np.ndarray) -> np.ndarray:
        """floor·u_m for models added at run time while u_m = sd_m ÷ (prior sd √(v₀/n₀)) > `floor_until` and the
        model is not confidently dominated (score + β·sd below another's score − β·sd); else 0."""
        score, sd = self.scores(context, specs, penalty)
        out = np.zeros(len(specs))
        for a, s in enumerate(specs):
            _, n0 = self.prior(s.name)
            u = sd[a] / math.sqrt(self.p.prior_variance / n0)
            beta = self.p.dominance
            dominated = any(score[a] + beta * sd[a] < score[b] - beta * sd[b] for b in range(len(specs)))
            if self.models[s.name].added and u > self.p.floor_until and not dominated:
                out[a] = self.p.floor * u
        return out


def thompson_pmf(mean: np.ndarray, sd: np.ndarray, points: int = 20_001) -> np.ndarray:
    """P(argmax = a) for independent N(mean_a, sd_a²): ∫ f_a(t) Π_{b≠a} F_b(t) dt on a uniform grid of `points`
    over ±12 sd of every arm (trapezoids), normalised; Π_{b≠a} F_b = exp(Σ_b log F_b − log F_a)."""
    if len(mean) == 1:
        return np.ones(1)
    t = np.linspace(float(np.min(mean - 12 * sd)), float(np.max(mean + 12 * sd)), points)
    log_cdf = np.array([norm.logcdf(t, m, s) for m, s in zip(mean, sd, strict=True)])
    everyone = log_cdf.sum(axis=0)
    p = np.zeros(len(mean))
    for a in range(len(mean)):
        f = norm.pdf(t, mean[a], sd[a]) * np.exp(everyone - log_cdf[a])
        p[a] = float(np.sum((f[1:] + f[:-1]) * np.diff(t)) / 2)
    return p / p.sum()


def with_floors(pmf: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """p' = (1 − Σf)·p + f with the floors scaled so that Σf ≤ ½; then clipped at 0 and renormalised."""
    total = float(floors.sum())
    f = floors * min(1.0, 0.5 / total) if total > 0 else floors
    out = (1.0 - f.sum()) * pmf + f
    out = np.maximum(out, 0.0)
    return out / out.sum()


def expected_cost(spec: ModelSpec, input_tokens: int, output_tokens_seen: Sequence[float]) -> float:
    """ĉ = (input tokens · p_in + ô · p_out)/10⁶, ô = (5·prior + Σ tokens)/(5 + n), each feedback's tokens counted at
    most 10 × the ô before it (`reward.OutputTokenEstimator`)."""
    prior = spec.output_tokens if spec.output_tokens is not None else 250.0
    o, total = prior, 5.0 * prior
    for n, tokens in enumerate(output_tokens_seen, start=1):
        total += min(tokens, 10.0 * max(o, 1.0))
        o = total / (5.0 + n)
    return (input_tokens * spec.input_usd_per_mtok + o * spec.output_usd_per_mtok) / 1e6


def draw(pmf: Sequence[float], u: float) -> int:
    """Inverse CDF of `pmf` at u (the last positive entry if rounding leaves u above the total)."""
    total, last = 0.0, 0
    for i, p in enumerate(pmf):
        if p > 0:
            total += p
            last = i
            if u < total:
                return i
    return last
