"""Accept or escalate: the rule a cascade applies after each answer but the last.

`ThresholdEscalation` is the field's rule: escalate when the confidence is missing or below a threshold.
`LearnedEscalation` is a contextual bandit over the two actions {accept, escalate}. For the answer of chain
step k, with prompt vector x (`features.dense_vector`) and confidence s ∈ [0, 1] (None when the signal gave
none), its state is

    z = [x, s·x, c_k(s)],   c_k(s) = [1{s missing}, 1{s given}, s, s², onehot(bin₁₀(s))] in the block of position k

(one block per chain position: a score means something else for each model; ten bins, one per rubric score).
k is the chain position of the model whose answer is decided on (a model after one that failed decides at its own
position, not at the number of decisions before it). With `history` (off by default) the state of a step k ≥ 1
also has h_k = [1{p missing}, p, p·s] in the block of position k, p the score of position k − 1's answer
(`decide`'s `earlier[-1]`: the chain passes one score per earlier position; missing when that model failed or its
signal gave none, so that each block is about one model: never an older model's score after a failed one),
prior mean 0, precision `history_ridge`: an earlier model's low score says the prompt is hard, which may change
what this answer's score is worth and what escalating gains — what no threshold on this step's score can read.
The confidence part is a smooth curve in s plus one free level per score: the bins contain every step function
of the score, so every fixed threshold is a special case of the model, and their deviations from the curve are
shrunk towards it (prior precision `bin_ridge`) so that scores seen rarely borrow from their neighbours.

Per action a, a Bayesian ridge regression (`policies.linear.RidgeRegression`; prior precision `ridge` on the
prompt blocks, `confidence_ridge` on the smooth part, `bin_ridge` on the bins, `history_ridge` on h) learns the
*final quality* of the chain from z: for `accept`, the quality of the answer accepted at this step; for
`escalate`, the quality the chain ended with after escalating here. Prior means: an accepted answer's quality is
(1 − calibration)·prior_quality + calibration·s (the score read as a calibrated estimate), an escalation's
`escalate_prior`, either without a score `prior_quality`. Cost is priced, not learned blind ("learn what is
unknown, price what is known"): escalating costs ĉ_k = r_k·c_next, the next model's expected cost for this
prompt times a learned ratio r_k (mean realised extra cost / c_next at step k, prior 1: later escalations add
to it). The cost already spent is sunk and common to both actions. Thompson sampling on the two scores gives

    P(escalate) = Φ((μ_e − λ·ĉ_k − μ_a) / (v·√(w_a² + w_e²))),   μ = θᵀz, w² = zᵀA⁻¹z

where, with `monotone` (the default), the gap μ_e − λ·ĉ_k − μ_a is first made non-increasing in the score: it is
computed for the same prompt (and earlier scores) at every score level of this step (`score_grid`), fitted by
weighted antitonic regression (`antitonic`, weights 1/σ², σ² = w_a² + w_e²: well-measured levels dominate) and read
at this score. Every threshold rule has this shape by construction; a level whose escalation was rarely tried, or
that was unlucky, follows its neighbours instead of staying stuck. P is mixed with a floor f so that both actions
keep a logged probability ≥ f for offline evaluation: p = f + (1 − 2f)·P, f = floor·(d + (1 − d)·2Φ(−|gap|/σ))
(`decided_floor` d: the floor shrinks to d·floor where the posterior has decided which action is better). The
chain's reward is the final quality − λ·(total cost of the chain), the quantity both actions' scores estimate up to
the common sunk cost. The probability of the action taken is logged with every step (`EscalationStep.probability`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..features import dense_vector
from ..policies.linear import RidgeRegression
from ..types import Context

BINS = 10
"""Confidence bins: one per score of the judge's 1–10 rubric ((score − 1)/9 falls in bin score − 1)."""
MAX_STEPS = 4
"""Chain positions with their own feature (a longer chain shares the last one)."""


@dataclass(frozen=True)
class EscalationStep:
    """One accept/escalate decision of a chain: where, on what confidence, what was done and with what probability.

    `probability` is the propensity of the action taken (1.0 for a fixed threshold); `p_escalate` the probability
    escalation had. `expected_extra_cost_usd` is what escalating was expected to add (ĉ_k).
    """

    step: int
    model: str
    confidence: float | None
    escalate: bool
    p_escalate: float
    expected_extra_cost_usd: float
    next_cost_usd: float = 0.0
    state: np.ndarray | None = None

    @property
    def probability(self) -> float:
        return self.p_escalate if self.escalate else 1.0 - self.p_escalate

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model,
            "confidence": self.confidence,
            "action": "escalate" if self.escalate else "accept",
            "probability": self.probability,
            "p_escalate": self.p_escalate,
            "expected_extra_cost_usd": self.expected_extra_cost_usd,
            "next_cost_usd": self.next_cost_usd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], state: np.ndarray | None = None) -> EscalationStep:
        """A step from `to_json()` (as stored with its decision's chain), with its state vector `state`."""
        confidence = data.get("confidence")
        return cls(
            int(data["step"]), str(data["model"]), None if confidence is None else float(confidence),
            data["action"] == "escalate", float(data["p_escalate"]), float(data["expected_extra_cost_usd"]),
            float(data.get("next_cost_usd", 0.0)), state,
        )  # fmt: skip


class Escalation(Protocol):
    """What a cascade asks after each answer but the last, and tells once the chain's final quality is known."""

    name: str

    def decide(
        self,
        context: Context,
        step: int,
        model: str,
        confidence: float | None,
        next_cost_usd: float,
        cost_weight: float,
        rng: np.random.Generator,
        earlier: Sequence[float | None] = (),
    ) -> EscalationStep:
        """Accept or escalate `model`'s answer, whose confidence is `confidence`, at chain position `step` (0 for
        the first model's answer, k for the (k+1)-th model's, whichever decision of the chain it is: after a failed
        model fewer decisions came before it); `earlier[j]` is the confidence of position j's answer, for every
        earlier position (len(earlier) = step; None where model j failed or its signal gave none). `CascadeRun`
        passes `earlier` only to a `decide` that takes it (`chain.takes_earlier`): a rule that has no use for it may
        leave it out. (A chain stored before `earlier` was by position is replayed with its answered steps'
        confidences instead, as it was decided: `log.escalations.stored_earlier`.)"""
        ...

    def learn(self, steps: Sequence[EscalationStep], final_quality: float, extra_costs: Sequence[float]) -> None:
        """`extra_costs[i]`: what the chain paid after `steps[i]` (0 for the accepting step)."""
        ...


class ThresholdEscalation:
    """Escalate when the confidence is missing or below `threshold` (deterministic: probability 1)."""

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        self.threshold = threshold
        self.name = f"threshold:{threshold:g}"

    def decide(
        self,
        context: Context,
        step: int,
        model: str,
        confidence: float | None,
        next_cost_usd: float,
        cost_weight: float,
        rng: np.random.Generator,
        earlier: Sequence[float | None] = (),
    ) -> EscalationStep:
        escalate = confidence is None or confidence < self.threshold
        p = 1.0 if escalate else 0.0
        return EscalationStep(step, model, confidence, escalate, p, next_cost_usd, next_cost_usd)

    def learn(self, steps: Sequence[EscalationStep], final_quality: float, extra_costs: Sequence[float]) -> None:
        return None


@dataclass(frozen=True)
class EscalationParams:
    """Settings of `LearnedEscalation`: prompt projection size, the ridge strengths (prior precisions) of the prompt
    features, of the smooth confidence curve and of the per-score levels, the prior means, the Thompson scale, the
    propensity floor (chosen on tuning seeds 100–102 of `experiments/cascade`)."""

    dim: int = 64
    ridge: float = 100.0
    confidence_ridge: float = 5.0
    bin_ridge: float = 5.0
    """Prior precision of the per-score deviations (the one-hot bins) from the smooth curve in s."""
    prior_quality: float = 0.5
    """The prior mean quality of an answer without a confidence, for both actions (a prior of 0 would make an
    action never tried look worse than any tried one)."""
    escalate_prior: float = 0.5
    """The prior mean final quality after escalating on a score (the next model is asked because it is expected
    to be better: a high prior tries escalation early, and its own outcomes correct it)."""
    calibration: float = 1.0
    """How much the prior trusts the score: an accepted answer's prior mean quality is
    (1 − calibration)·prior_quality + calibration·s (1: the judge is calibrated; 0: the score says nothing)."""
    v: float = 0.05
    floor: float = 0.001
    decided_floor: float = 0.1
    """The share of `floor` kept where the posterior has decided: the floor used is
    f·(d + (1 − d)·2Φ(−|gap|/σ)) (σ the unscaled posterior spread of the gap, d = `decided_floor`): `floor` where
    the two actions are close, d·floor where one is clearly better (d > 0: the log still supports offline
    evaluation, with importance weights up to 1/(d·floor); 1 keeps the fixed floor, e.g. for a log meant to
    evaluate other rules)."""
    history: bool = False
    """Give the state of steps ≥ 1 the previous model's score (`history_features`): an earlier model's low score
    says the prompt is hard, which changes what this answer's score is worth and what escalating gains."""
    history_ridge: float = 5.0
    """Prior precision of the history block (prior mean 0: the earlier score changes nothing until outcomes say)."""
    monotone: bool = True
    """Decide on the gain of escalating made non-increasing in the score (`antitonic`): what every threshold rule
    is by construction, so that a score level whose escalation was never tried borrows from its neighbours."""

    def __post_init__(self) -> None:
        if not 32 <= self.dim <= 1024:
            raise ValueError("dim must be in [32, 1024]")
        for name in ("ridge", "confidence_ridge", "bin_ridge", "history_ridge", "v"):  # TOML has nan and inf
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and name != "v")
            ):
                raise ValueError(f"{name} must be a finite number {'>= 0' if name == 'v' else '> 0'}, not {value!r}")
        if not all(0.0 <= x <= 1.0 for x in (self.prior_quality, self.escalate_prior, self.calibration)):
            raise ValueError("prior_quality, escalate_prior and calibration must be in [0, 1]")
        if not 0.0 <= self.floor < 0.5:
            raise ValueError("floor must be in [0, 0.5)")
        if isinstance(self.decided_floor, bool) or not isinstance(self.decided_floor, int | float):
            raise ValueError("decided_floor must be a number in (0, 1]")
        if not 0.0 < self.decided_floor <= 1.0:  # 0: a decided action's probability would reach exactly 0
            raise ValueError("decided_floor must be in (0, 1] (floor = 0 for no floor at all)")
        for flag in ("monotone", "history"):  # a TOML string "false" would otherwise turn it on
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, not {getattr(self, flag)!r}")


CONFIDENCE_FEATURES = 4 + BINS
"""Per chain position: 1{missing}, 1{present}, s, s², onehot(bin(s))."""
SMOOTH = 4
"""The first four of them: the smooth part (a quadratic in s, or the missing signal's own level)."""


def confidence_features(confidence: float | None, step: int) -> np.ndarray:
    """[1{missing}, 1{present}, s, s², onehot(bin(s))] in the block of chain position `step` (each position has
    its own, since a score means something else for each model), shape (MAX_STEPS · (4 + BINS),)."""
    out = np.zeros(MAX_STEPS * CONFIDENCE_FEATURES)
    base = min(step, MAX_STEPS - 1) * CONFIDENCE_FEATURES
    if confidence is None:
        out[base] = 1.0
    else:
        s = min(max(confidence, 0.0), 1.0)
        out[base + 1], out[base + 2], out[base + 3] = 1.0, s, s * s
        out[base + SMOOTH + min(int(s * BINS + 1e-9), BINS - 1)] = 1.0
    return out


HISTORY = 3
"""Per chain position k ≥ 1 (with `EscalationParams.history`): 1{position k − 1's score missing}, p, p·s."""
HISTORY_START = MAX_STEPS * CONFIDENCE_FEATURES
"""Where the history blocks start after the prompt blocks [x, s·x]."""


def history_features(earlier: Sequence[float | None], confidence: float | None, step: int) -> np.ndarray:
    """[1{p missing}, p, p·s] in the block of chain position `step` ≥ 1, p = `earlier[-1]`, position `step` − 1's
    score (missing when None: that model failed, or its signal gave none) and s this step's (0 when missing), shape
    ((MAX_STEPS − 1) · HISTORY,); all 0 at step 0 (nothing before it)."""
    out = np.zeros((MAX_STEPS - 1) * HISTORY)
    if step == 0:
        return out
    base = (min(step, MAX_STEPS - 1) - 1) * HISTORY
    previous = earlier[-1] if earlier else None
    if previous is None:
        out[base] = 1.0
    else:
        p = min(max(float(previous), 0.0), 1.0)
        s = 0.0 if confidence is None else min(max(confidence, 0.0), 1.0)
        out[base + 1], out[base + 2] = p, p * s
    return out


def score_grid(z: np.ndarray, step: int, dim: int, history: bool = False) -> tuple[np.ndarray | None, int]:
    """State z = [x, s·x, c_k(s), h_k(p, s)] at every score level: row b is the state of the same prompt with the
    score b/9 (the rubric score b + 1, in bin b) and the same earlier scores, except row bin(s), which is z itself;
    and bin(s). (None, 0) when the confidence is missing (no order to respect)."""
    base = 2 * dim + min(step, MAX_STEPS - 1) * CONFIDENCE_FEATURES
    if z[base + 1] != 1.0:
        return None, 0
    own = int(np.argmax(z[base + SMOOTH : base + SMOOTH + BINS]))
    scores = np.arange(BINS) / (BINS - 1)
    scores[own] = z[base + 2]
    grid = np.repeat(z[None, :], BINS, axis=0)
    grid[:, dim : 2 * dim] = scores[:, None] * z[None, :dim]
    grid[:, base + 2], grid[:, base + 3] = scores, scores * scores
    grid[:, base + SMOOTH : base + SMOOTH + BINS] = np.eye(BINS)
    if history and step > 0:  # p·s follows s; p (an earlier step's score) stays as it is
        h = 2 * dim + HISTORY_START + (min(step, MAX_STEPS - 1) - 1) * HISTORY
        grid[:, h + 2] = z[h + 1] * scores
    return grid, own


def antitonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares fit to `values` that is non-increasing in the index (pool adjacent violators:
    a run that rises is replaced by its weighted mean)."""
    blocks: list[list[float]] = []  # [weighted mean, weight, length]
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([value, weight, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def _ridge(precision: np.ndarray, prior: np.ndarray) -> RidgeRegression:
    """A ridge regression with prior precision `precision` and prior mean `prior` per feature
    (A₀ = diag(precision), b₀ = precision ⊙ θ₀)."""
    reg = RidgeRegression(len(precision), 1.0)
    reg.a = np.diag(precision)
    reg.a_inv = np.diag(1.0 / precision)
    reg.prior = prior.copy()
    reg.b = precision * prior
    reg.theta = prior.copy()
    return reg


def prior_mean(
    dim: int, missing: float, level: float, calibration: float = 0.0, history: bool = False
) -> np.ndarray:
    """θ₀ with q̂ = `missing` for a missing confidence and q̂ = (1 − calibration)·level + calibration·s for a score
    s (the prompt's features, the per-score deviations and the history block start at 0)."""
    theta = np.zeros(state_size(dim, history))
    for k in range(MAX_STEPS):
        base = 2 * dim + k * CONFIDENCE_FEATURES
        theta[base] = missing
        theta[base + 1] = (1.0 - calibration) * level
        theta[base + 2] = calibration
    return theta


def state_size(dim: int, history: bool) -> int:
    """The length of z: the prompt blocks, the confidence blocks, and the history blocks when `history`."""
    return 2 * dim + HISTORY_START + ((MAX_STEPS - 1) * HISTORY if history else 0)


def prior_precision(params: EscalationParams) -> np.ndarray:
    """diag(A₀): `ridge` on the prompt blocks, `confidence_ridge` on the smooth part, `bin_ridge` on the bins,
    `history_ridge` on the history blocks."""
    block = np.concatenate([np.full(SMOOTH, params.confidence_ridge), np.full(BINS, params.bin_ridge)])
    parts = [np.full(2 * params.dim, params.ridge), np.tile(block, MAX_STEPS)]
    if params.history:
        parts.append(np.full((MAX_STEPS - 1) * HISTORY, params.history_ridge))
    return np.concatenate(parts)


class LearnedEscalation:
    """A contextual bandit over {accept, escalate} (see the module docstring for the model and the propensity)."""

    def __init__(self, params: EscalationParams | None = None) -> None:
        self.params = params or EscalationParams()
        p = self.params
        self.name = f"learned:v={p.v:g},floor={p.floor:g}"
        self.size = state_size(p.dim, p.history)
        precision = prior_precision(p)
        self.accept = _ridge(
            precision, prior_mean(p.dim, p.prior_quality, p.prior_quality, p.calibration, p.history)
        )
        self.escalate = _ridge(precision, prior_mean(p.dim, p.prior_quality, p.escalate_prior, history=p.history))
        self.cost_ratio = np.ones(MAX_STEPS)
        self.cost_count = np.zeros(MAX_STEPS)
        self.updates = 0

    def state_vector(
        self, context: Context, step: int, confidence: float | None, earlier: Sequence[float | None] = ()
    ) -> np.ndarray:
        """z for the answer of chain position `step` with `confidence`, after the earlier positions' scores
        `earlier` (`Escalation.decide`; read only with `history`, then at most `step` of them)."""
        x = dense_vector(context, self.params.dim)
        s = 0.0 if confidence is None else min(max(confidence, 0.0), 1.0)
        parts = [x, s * x, confidence_features(confidence, step)]
        if self.params.history:
            if len(earlier) > step:
                raise ValueError(f"position {step} has at most {step} earlier positions' scores, not {len(earlier)}")
            parts.append(history_features(earlier, confidence, step))
        return np.concatenate(parts)

    def p_escalate(self, z: np.ndarray, step: int, next_cost_usd: float, cost_weight: float) -> tuple[float, float]:
        """(P(escalate), ĉ_k) for state z (see the module docstring)."""
        extra = float(self.cost_ratio[min(step, MAX_STEPS - 1)]) * next_cost_usd
        params = self.params
        grid, own = score_grid(z, step, params.dim, params.history) if params.monotone else (None, 0)
        states = z[None, :] if grid is None else grid
        mean_a, mean_e = states @ self.accept.theta, states @ self.escalate.theta
        variances = np.maximum(((states @ self.accept.a_inv) * states).sum(axis=1), 0.0) + np.maximum(
            ((states @ self.escalate.a_inv) * states).sum(axis=1), 0.0
        )
        gaps = mean_e - cost_weight * extra - mean_a
        gap = float(antitonic(gaps, 1.0 / np.maximum(variances, 1e-12))[own]) if grid is not None else float(gaps[0])
        var = float(variances[own])
        scale = self.params.v * math.sqrt(var)
        if scale <= 0:
            p = 1.0 if gap > 0 else (0.0 if gap < 0 else 0.5)
        else:
            p = 0.5 * math.erfc(-gap / (scale * math.sqrt(2.0)))
        f = self.params.floor
        d = self.params.decided_floor
        if d < 1.0:  # the floor shrinks where the posterior has decided (see `decided_floor`)
            doubt = math.erfc(abs(gap) / math.sqrt(2.0 * var)) if var > 0 else 0.0  # 2Φ(−|gap|/σ)
            f *= d + (1.0 - d) * doubt
        return f + (1.0 - 2.0 * f) * p, extra

    def decide(
        self,
        context: Context,
        step: int,
        model: str,
        confidence: float | None,
        next_cost_usd: float,
        cost_weight: float,
        rng: np.random.Generator,
        earlier: Sequence[float | None] = (),
    ) -> EscalationStep:
        z = self.state_vector(context, step, confidence, earlier)
        p, extra = self.p_escalate(z, step, next_cost_usd, cost_weight)
        return EscalationStep(step, model, confidence, bool(rng.random() < p), p, extra, next_cost_usd, z)

    def learn(self, steps: Sequence[EscalationStep], final_quality: float, extra_costs: Sequence[float]) -> None:
        q = float(final_quality)
        for step, extra in zip(steps, extra_costs, strict=True):
            if step.state is None:
                continue
            arm = self.escalate if step.escalate else self.accept
            arm.update(step.state, q, 1.0, 1.0)
            if step.escalate and step.next_cost_usd > 0:
                k = min(step.step, MAX_STEPS - 1)
                ratio = extra / step.next_cost_usd
                self.cost_count[k] += 1
                self.cost_ratio[k] += (ratio - self.cost_ratio[k]) / (self.cost_count[k] + 1)  # prior: 1 at weight 1
        self.updates += 1

    def learn_both(self, step: EscalationStep, accept_quality: float, escalate_quality: float) -> None:
        """Full-information update, for a warm start on labelled outcomes (every model's quality known offline):
        both arms learn from `step`'s state, `accept` the quality of its answer, `escalate` the final quality the
        chain reaches from the next model on."""
        if step.state is None:
            return
        self.accept.update(step.state, float(accept_quality), 1.0, 1.0)
        self.escalate.update(step.state, float(escalate_quality), 1.0, 1.0)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {
            "accept": {"a": self.accept.a, "a_inv": self.accept.a_inv, "b": self.accept.b},
            "escalate": {"a": self.escalate.a, "a_inv": self.escalate.a_inv, "b": self.escalate.b},
            "cost_ratio": self.cost_ratio,
            "cost_count": self.cost_count,
            "updates": self.updates,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore `state()`. A state of another layout (another `dim`, saved before the confidence basis had its
        smooth part: 13 features per chain position, now 14, or with `history` the other way) is refused with a
        ValueError, not misread."""
        p = self.params
        arms = {}
        for name in ("accept", "escalate"):
            a, a_inv, b = (np.array(state[name][k], dtype=np.float64) for k in ("a", "a_inv", "b"))
            if a.shape != (self.size, self.size) or a_inv.shape != a.shape or b.shape != (self.size,):
                history = f"{HISTORY} history features per position after the first" if p.history else "no history"
                other = b.shape == (state_size(p.dim, not p.history),)
                raise ValueError(
                    f"escalation state has {b.shape[0] if b.ndim else 0} features where this learner has {self.size} "
                    f"(dim = {p.dim}, {CONFIDENCE_FEATURES} confidence features per chain position, {history})"
                    + (f": a state saved with history = {str(not p.history).lower()}" if other else "")
                )
            arms[name] = (a, a_inv, b)
        for name, (a, a_inv, b) in arms.items():
            arm = getattr(self, name)
            arm.a, arm.a_inv, arm.b = a, a_inv, b
            arm.theta = arm.a_inv @ arm.b
        self.cost_ratio = np.array(state["cost_ratio"], dtype=np.float64)
        self.cost_count = np.array(state["cost_count"], dtype=np.float64)
        self.updates = int(state["updates"])
