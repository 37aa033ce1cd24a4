"""Overlap diagnostics: can the log say anything about this candidate?

Two ways an off-policy estimate goes wrong, each with a documented threshold (`OverlapThresholds`):

- **Few effective rounds.** ESS = (Σ w)² / Σ w² (Kish 1965) of the importance weights w_i = π(a_i|x_i)/μ_i,
  and the ESS the logger's pmfs lead one to expect, whichever actions happened to be drawn:

      ESS_μ = n · (mean_i E_μ[w | x_i])² / mean_i E_μ[w² | x_i],   E_μ[w² | x] = Σ_{a: μ(a|x) > 0} π(a|x)² / μ(a|x)

  When either is below `min_ess_ratio`·n (default 10%) or `min_ess` (default 30), a handful of rounds with large
  weights carry the estimate: its normal interval is not to be trusted (it under-covers with heavy-tailed
  weights) and IPS can swing far. On a log of fewer than `min_ess` rounds the floor is n: a candidate whose
  weights are all equal (ESS = n, the most n rounds give: the logged policy, whose weights are all 1) raises no
  overlap warning; the log's small size is the evaluation's own warning ("only n rounds to evaluate on").
  The drawn ESS alone is fooled by a lucky log: a candidate the logger exploited on some contexts (w ≈ 1 on
  many rounds) and explored rarely on the others (w = 1/μ large, but not drawn) shows a comfortable ESS while
  the estimate misses the rare rounds' share: such logs' intervals almost never cover the truth
  (`experiments/offline-evaluation/coverage.py`; `tests/test_offline_replay.py`). At ESS = 0 (every weight 0:
  the candidate never chooses a logged model) no round carries anything: the warning says that there is no
  estimate, not that a few rounds carry it.
- **Support violation.** The unsupported mass (1/n) Σ_i Σ_a π(a|x_i)·1[μ(a|x_i) < `support_floor`,
  π(a|x_i) > μ(a|x_i)] is the share of the candidate's probability that sits where the logger (almost) never goes
  (default floor 0.001, i.e. once in a thousand) and goes there more often than the logger (weights above 1). A
  model the candidate chooses no more often than the logger did is seen in proportion (the logged policy's own
  pmfs, π = μ, every weight 1, on a catalog of 100 models with a long tail of tiny probabilities, had been warned
  of). Above `max_unsupported_mass` (default 0.01) IPS, clipped IPS and SNIPS miss that part
  of the value (biased, however many rounds), and DM/DR rely on the reward model extrapolating there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .estimators import effective_sample_size

ESS_TOLERANCE = 1e-9
"""Relative rounding allowed below a threshold: π = μ gives ESS_μ = n only up to the pmfs' rounding."""


@dataclass(frozen=True)
class OverlapThresholds:
    """When `overlap` warns; see the module docstring for what each threshold guards against."""

    min_ess_ratio: float = 0.1
    min_ess: float = 30.0
    support_floor: float = 1e-3
    max_unsupported_mass: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_ess_ratio <= 1.0 or self.min_ess < 0:
            raise InvalidInput("min_ess_ratio must be in [0, 1] and min_ess >= 0")
        if not 0.0 <= self.support_floor < 1.0 or not 0.0 <= self.max_unsupported_mass <= 1.0:
            raise InvalidInput("support_floor must be in [0, 1) and max_unsupported_mass in [0, 1]")


@dataclass(frozen=True)
class Overlap:
    """Overlap between a candidate and the logger on n rounds, and the warnings it raises."""

    n: int
    ess: float
    ess_ratio: float
    max_weight: float
    unsupported_mass: float
    warnings: tuple[str, ...] = ()
    expected_ess: float = math.nan
    """ESS_μ: the effective sample size expected from the logged pmfs (see the module docstring)."""

    @property
    def trusted(self) -> bool:
        """True when no threshold was crossed."""
        return not self.warnings

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ess": self.ess,
            "ess_ratio": self.ess_ratio,
            "max_weight": self.max_weight,
            "unsupported_mass": self.unsupported_mass,
            "expected_ess": self.expected_ess,
            "warnings": list(self.warnings),
        }


def overlap(
    actions: np.ndarray,
    logged_probability: np.ndarray,
    logged_pmf: np.ndarray,
    target_pmf: np.ndarray,
    thresholds: OverlapThresholds | None = None,
) -> Overlap:
    """Diagnose a candidate `target_pmf` (n, K) against the logger's `logged_pmf` (n, K), given the logged
    `actions` (n,) and their `logged_probability` (n,)."""
    t = thresholds or OverlapThresholds()
    n = len(actions)
    if n == 0:
        return Overlap(0, 0.0, 0.0, 0.0, 0.0, ("no logged rounds with feedback: nothing to estimate from",), 0.0)
    pi = np.asarray(target_pmf, dtype=np.float64)
    mu = np.asarray(logged_pmf, dtype=np.float64)
    w = pi[np.arange(n), np.asarray(actions, dtype=np.intp)] / np.asarray(logged_probability, dtype=np.float64)
    ess = effective_sample_size(w)
    ratio = ess / n
    expected = expected_effective_sample_size(mu, pi)
    unsupported = float((pi * ((mu < t.support_floor) & (pi > mu))).sum(axis=1).mean())
    warnings = []
    floor = min(t.min_ess, n)  # no candidate has more than n effective rounds: the log's size is warned of apart
    least = min(ess, expected)
    if least < max(t.min_ess_ratio * n, floor) * (1.0 - ESS_TOLERANCE):
        seen = (f"effective sample size {ess:.1f} of {n} rounds ({100 * ratio:.1f}%), {expected:.1f} "
                f"({100 * expected / n:.1f}%) expected from the logged pmfs")
        if not np.any(w > 0):  # ESS 0: no round to carry anything, not "a few rounds carry the estimate"
            never = ("its choices never had positive logged probability" if expected == 0.0
                     else "no logged draw fell on its choices")
            warnings.append(
                f"no overlap: {seen}: no logged round supports the candidate ({never}), so there is no estimate: "
                "IPS is 0 and SNIPS undefined by construction, DM/DR only extrapolate the reward model"
            )
        elif n < t.min_ess and least >= t.min_ess_ratio * n * (1.0 - ESS_TOLERANCE):  # only the small log's floor
            warnings.append(
                f"poor overlap on a small log: {seen}; under {t.min_ess:.0f} rounds every round the weights discount "
                f"is warned of: the estimate rests on fewer rounds than the {n} the log has, do not trust it"
            )
        else:
            warnings.append(
                f"poor overlap: {seen}; warn below {100 * t.min_ess_ratio:.0f}% or {floor:.0f}; a few rounds carry "
                "the estimate, do not trust it"
            )
    if unsupported > t.max_unsupported_mass:
        warnings.append(
            f"support violation: {100 * unsupported:.1f}% of the candidate's probability is on models the logger "
            f"chose with probability < {t.support_floor:g}; IPS/SNIPS miss that part, DM/DR extrapolate"
        )
    return Overlap(n, ess, ratio, float(w.max()), unsupported, tuple(warnings), expected)


def expected_effective_sample_size(logged_pmf: np.ndarray, target_pmf: np.ndarray) -> float:
    """ESS_μ = n · (mean_i Σ_a π_i(a))² / mean_i Σ_a π_i(a)²/μ_i(a), sums over the actions with μ_i(a) > 0, of a
    target `target_pmf` (n, K) under the logger's `logged_pmf` (n, K): the ESS of the importance weights in
    expectation over the logger's draws (0 when π has no mass where μ > 0)."""
    mu = np.asarray(logged_pmf, dtype=np.float64)
    pi = np.asarray(target_pmf, dtype=np.float64)
    n = len(mu)
    seen = mu > 0
    first = float(np.where(seen, pi, 0.0).sum(axis=1).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        second = float(np.where(seen, pi * pi / np.where(seen, mu, 1.0), 0.0).sum(axis=1).mean())
    return 0.0 if second == 0.0 else n * first * first / second
