"""Budget targets in the simulator (`bandit-router simulate … --target avg_cost_usd=0.0005`).

`TargetPacers(texts)` is the plan's picklable `pacer_factory`: every learning router of a run gets a fresh
`SimulatedPacer`, whose clock is the simulated step (`seconds_per_step` seconds each, so `spend_usd=5/1000s`
means 5 USD per 1,000 steps at the default of one second per step). The agent sets `pacer.now` before each
decision and passes no λ of its own, so the pacer's λ is the one used.

`realized_values(config, episode, trace)` measures every global target on what a run really did (real costs,
real latencies, the chosen models), for every record: learning routers, the oracle and the fixed models alike,
so a user sees beforehand what a target costs in quality.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit_router.budgets import AvgCost, BudgetConfig, BudgetPacer, Latency, Share, Spend
from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.types import Decision


class SimulatedPacer(BudgetPacer):
    """A `BudgetPacer` on simulated time: `now` (seconds) is set by the agent before each decision.

    A decision's `created_at` is wall time, not this clock's: the pacer notes the simulated time of each booking
    (`observe(decision, None)`, `book`) by decision and gives it to the decision's correction (`booked_at`), so
    a refund counts only in the spend period and scopes its booking was made in (`BudgetPacer.booked_at`)."""

    def __init__(self, config: BudgetConfig, seconds_per_step: float = 1.0) -> None:
        self.now = 0.0
        self.seconds_per_step = seconds_per_step
        self._booked_times: weakref.WeakKeyDictionary[Decision, float] = weakref.WeakKeyDictionary()
        """The simulated time of each booking, by decision (the simulation corrects the object it booked): a decision
        whose feedback is lost is forgotten with it, so this holds no more than the decisions awaiting feedback."""
        super().__init__(config, clock=self._time)
        self.trajectory: list[tuple[int, float | None, float]] | None = None
        """When a list: (step, λ of the global scope, booked spend) appended at every `tick` (for plots)."""

    def _time(self) -> float:
        return self.now

    def observe(self, decision: Decision, cost_usd: float | None, latency_s: float | None = None, *,
                at: float | None = None) -> None:
        if cost_usd is None:
            self._booked_times[decision] = self.now if at is None else at
        super().observe(decision, cost_usd, latency_s, at=at)
        if cost_usd is not None:
            self._booked_times.pop(decision, None)  # one correction per decision in a simulation

    def book(self, decision: Decision, cost_usd: float, *, at: float | None = None) -> None:
        self._booked_times[decision] = self.now if at is None else at
        super().book(decision, cost_usd, at=at)

    def booked_at(self, decision: Decision) -> float | None:
        """The simulated time its booking was made at (None: not booked by this pacer), not its wall `created_at`."""
        return self._booked_times.get(decision)

    def tick(self, step: int) -> None:
        """The clock of simulated step `step`."""
        self.now = step * self.seconds_per_step
        if self.trajectory is not None:
            self.trajectory.append((step, self.cost_weight(), self._global.spend_usd))


@dataclass(frozen=True)
class TargetPacers:
    """A picklable pacer factory: `BudgetConfig.from_strings(texts, **settings)` for every router."""

    texts: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...] = ()
    seconds_per_step: float = 1.0

    def __post_init__(self) -> None:
        self.config  # noqa: B018 (fail early on a bad target)
        if not (math.isfinite(self.seconds_per_step) and self.seconds_per_step > 0):
            raise InvalidInput("seconds_per_step must be > 0")

    @property
    def config(self) -> BudgetConfig:
        return BudgetConfig.from_strings(self.texts, **dict(self.settings))

    def __call__(self, models: Sequence[ModelSpec], cost_weight: float) -> SimulatedPacer:
        config = self.config
        if config.fallback_model is not None and config.fallback_model not in {m.name for m in models}:
            raise InvalidInput(f"fallback_model {config.fallback_model!r} is not among the models")
        unmatched = config.shares_matching_nothing(models)  # a misspelt model or tag: a target that never binds
        if unmatched:
            raise InvalidInput(f"{', '.join(unmatched)}: no model of the run is picked by that selector; models: "
                               f"{', '.join(m.name for m in models)}")
        return SimulatedPacer(config, self.seconds_per_step)


def realized_values(
    config: BudgetConfig,
    models: Sequence[ModelSpec],
    chosen: np.ndarray,
    cost_usd: np.ndarray,
    latency_s: np.ndarray | None,
    seconds_per_step: float = 1.0,
) -> dict[str, float]:
    """Per global target `t`: `target:t:value` and `target:t:realized` measured on the run (NaN if unknown).

    avg_cost: mean paid per served request; spend: paid per period (total × period / run length, in simulated
    seconds), and `:max_period` the most paid in one period the run covers whole (periods as the pacer's clock
    has them, also when a period is not a whole number of steps); share: fraction of served requests; latency:
    the percentile of the served requests' latencies."""
    served = chosen >= 0
    out: dict[str, float] = {}
    n = len(chosen)
    paid = np.where(served, np.nan_to_num(cost_usd, nan=0.0), 0.0)
    for target in config.targets:
        key = f"target:{target}"
        realized = math.nan
        if isinstance(target, AvgCost):
            out[f"{key}:value"] = target.usd
            if served.any():
                realized = float(paid[served].mean())
        elif isinstance(target, Spend):
            out[f"{key}:value"] = target.usd
            if n:
                realized = float(paid.sum() * target.period_s / (n * seconds_per_step))
            # step t is at t·seconds_per_step on the pacer's clock, in its period floor(t·seconds_per_step / P)
            period = np.floor(np.arange(n) * seconds_per_step / target.period_s).astype(np.int64)
            whole = math.floor(n * seconds_per_step / target.period_s)  # the periods the run covers whole
            out[f"{key}:max_period"] = (
                float(np.bincount(period, weights=paid)[:whole].max()) if whole else math.nan
            )
        elif isinstance(target, Share):
            out[f"{key}:value"] = target.max_share
            hit = np.array([target.matches_spec(m) for m in models] + [False])  # index −1: not served
            if served.any():
                realized = float(hit[chosen][served].mean())
        elif isinstance(target, Latency):
            out[f"{key}:value"] = target.max_s
            if latency_s is not None and served.any():
                realized = float(np.nanpercentile(latency_s[served], target.percentile))
        out[f"{key}:realized"] = realized
    return out
