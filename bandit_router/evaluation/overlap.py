"""Overlap diagnostics: can the log say anything about this candidate?

Two ways an off-policy estimate goes wrong, each with a documented threshold (`OverlapThresholds`):

- **Few effective rounds.** ESS = (Σ w)² / Σ w² (Kish 1965) of the importance weights w_i = π(a_i|x_i)/μ_i.
  When ESS/n < `min_ess_ratio` (default 0.1) or ESS < `min_ess` (default 30), a handful of rounds with large
  weights carry the estimate: its normal interval is not to be trusted (it under-covers with heavy-tailed
  weights) and IPS can swing far.
- **Support violation.** The unsupported mass (1/n) Σ_i Σ_a π(a|x_i)·1[μ(a|x_i) < `support_floor`] is the share
  of the candidate's probability that sits where the logger (almost) never goes (default floor 0.001, i.e.
  once in a thousand). Above `max_unsupported_mass` (default 0.01) IPS, clipped IPS and SNIPS miss that part
  of the value (biased, however many rounds), and DM/DR rely on the reward model extrapolating there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .estimators import effective_sample_size


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
        return Overlap(0, 0.0, 0.0, 0.0, 0.0, ("no logged rounds with feedback: nothing to estimate from",))
    pi = np.asarray(target_pmf, dtype=np.float64)
    mu = np.asarray(logged_pmf, dtype=np.float64)
    w = pi[np.arange(n), np.asarray(actions, dtype=np.intp)] / np.asarray(logged_probability, dtype=np.float64)
    ess = effective_sample_size(w)
    ratio = ess / n
    unsupported = float((pi * (mu < t.support_floor)).sum(axis=1).mean())
    warnings = []
    if ratio < t.min_ess_ratio or ess < t.min_ess:
        warnings.append(
            f"poor overlap: effective sample size {ess:.1f} of {n} rounds ({100 * ratio:.1f}%; warn below "
            f"{100 * t.min_ess_ratio:.0f}% or {t.min_ess:.0f}); a few rounds carry the estimate, do not trust it"
        )
    if unsupported > t.max_unsupported_mass:
        warnings.append(
            f"support violation: {100 * unsupported:.1f}% of the candidate's probability is on models the logger "
            f"chose with probability < {t.support_floor:g}; IPS/SNIPS miss that part, DM/DR extrapolate"
        )
    return Overlap(n, ess, ratio, float(w.max()), unsupported, tuple(warnings))
