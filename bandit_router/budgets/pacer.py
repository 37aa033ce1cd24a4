"""`BudgetPacer`: holds cost, share and latency targets while the router maximises quality, per tenant.

Why one module of ~700 lines: most of it is this docstring's derivation and the five small control classes
(`_AvgCostControl`, `_SpendControl`, `_ShareControl`, `_LatencyControl` on `_Control`) that `BudgetPacer` drives
through one per-scope loop; the math and the code that implements it are kept side by side.

The problem is  max E[quality]  subject to the targets. Its Lagrangian gives each decision the score

    q̂_m − λ·ĉ_m − Σ_k μ_k·1[m ∈ S_k] − Σ_j ν_j·P̂(latency_m > L_j)

and the pacer sets the multipliers online by projected dual descent, one step per request (Balseiro, Lu &
Mirrokni 2020, "Dual Mirror Descent for Online Allocation Problems"). No randomness: the same calls with the
same clock readings give the same multipliers.

**Cost targets** move λ in log space (mirror descent with an entropic mirror map), so one step size serves
every price scale (λ spans 1 … 10⁵ quality points per USD across catalogs):

    log λ ← clip(log λ + η·g,  log λ_min,  log λ_max),   η = `cost_step` (0.05)

    avg_cost_usd = ρ:    g = (c − ρ) / ρ                           per request
    spend_usd = B/P:     g = (c − r·Δt) / ρ̄,   r = B/P            r·Δt: the plan's allowance since the scope's
                                                                   previous request (within the period)
                         ρ̄ = r·τ̂                                  the budget of one request at the current
                                                                   traffic; τ̂: EWMA (β = 1/32) of the gaps

The cost c of a decision is booked when it is made (the chosen model's expected cost ĉ) and corrected by
c_real − ĉ when its real cost arrives, so pacing reacts at once even when feedback is late or missing. A decision
whose calls were all paid before it is booked (a named router's chain) is booked at its real cost (`book`), and
money paid beside a booking (an LLM router's routing call, the feedback judge's call) is added as a correction
(`spend`).

A correction counts where its booking was made. A refund (c_real < ĉ) of a decision made before a spend target's
current period started, before the target was set (an average cost's: set or its value changed) or before its
tenant got targets, is dropped there: that period, target or scope never booked the ĉ it would give back (counted,
a day that starts with a refund of yesterday's booking could spend B + ĉ − c_real, its spend negative). Money paid
beyond a booking (c_real > ĉ) is charged where it arrives, whoever booked it. So a period's spend is never below
what was paid in it, nor over it by more than the refunds dropped (cautious: it binds early, never late). The time
a decision was made is its `created_at` (Unix time, the clock of the service's pacer): `booked_at`, which a pacer on
another clock overrides (the simulator's notes the simulated time of each booking). The rule reads only that time,
the periods' starts and when targets were set (stored with the state: a restart keeps them, a process following
a PUT takes them from its stored state, `adopt_since`), so every process
sharing a log gives a correction the same fate whenever it books the decision and learns its feedback (a feedback
learned before the decision is read from the log included). A decision made an instant before a period starts and
booked after (its feedback a refund) keeps its ĉ in the new period: cautious, by that instant's refunds.

Why this holds the target. Summing the steps (while λ stays inside its bounds),

    log(λ_N / λ_0) = η·(S_N − ρ·N) / ρ     ⇒     (S_N − ρN) / (ρN) = log(λ_N / λ_0) / (η·N):

λ is the integral of the overspend, so the relative error of the mean cost falls as 1/N; a window of n
requests is off by its change of log λ over η·n. For a spend target the same sum reads
S(t) − r·(t − t₀) = ρ̄·log(λ(t)/λ(t₀)) / η: spend stays within a few requests' worth of budget of the
straight-line plan B·(t − t₀)/P at every moment, so the start of a period does not spend the end's money
and the end is not left without it. λ carries over from one period to the next: a new period starts at
the price that held the last one, not at a guess. A spend target counts spend from its first request on:
in the period in which it starts, its plan and its limit are pro rata, B·(period end − start)/P.

Step size. η sets how fast λ moves (a request that costs k times its share multiplies λ by e^{η(k−1)}) and
how much it jitters around the λ that meets the target. By the sum above, a λ that starts e^x off costs
x/η requests' worth of budget to correct (20× off: 60 requests' worth at η = 0.05); the stationary spread
of log λ is about √(η·Var g / 2κ), κ the elasticity of cost to λ (0.25–0.45 in the tests' world).

**Share targets** (at most s of the decisions to the models S): μ ← max(0, μ + η_s·(1[chosen ∈ S] − s)),
η_s = `share_step` in quality points; summing, hits − s·N = (μ_N − μ_0)/η_s. `s = 0` removes the models.

**Latency targets** (the p-th percentile ≤ L, i.e. P(latency > L) ≤ 1 − p/100): on each reported latency
ν ← max(0, ν + η_l·(1[latency > L] − (1 − p/100))); the penalty of model m is ν·P̂_m(latency > L), where P̂_m is a
discounted (0.99) frequency with a prior worth 2 observations, exp(−L / prior mean latency).

**Guard rails.** While a spend target's period budget is exhausted (booked spend ≥ B), only the models
`BudgetConfig` allows then may be chosen: those priced at most `guard_max_usd_per_mtok`, else the
`fallback_model`, else the request's cheapest model. Its λ does not move meanwhile.

**Scopes.** Global targets see all decisions, a tenant's targets only its own (`context.attributes["tenant"]`
as text). A request gets the largest λ of the cost targets that apply (the router's default λ when none does),
the sum of the share and latency penalties, the guard rails of any exhausted scope. A request's explicit
`cost_weight` replaces λ for that request only; its spend counts as any other.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, ClassVar

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..types import Context, Decision, logged_tenant, tenant_named
from .config import BudgetConfig, say
from .targets import AvgCost, Latency, Share, Spend, Target, finite_number, parse_target

log = logging.getLogger("bandit_router.budgets")

STATE_FORMAT = "bandit-router-budgets/1"
GAP_SMOOTHING = 1.0 / 32.0
"""β of the EWMA of the gaps between a scope's requests (τ̂ ← τ̂ + β·(Δt − τ̂))."""
EXCEEDANCE_DECAY = 0.99
EXCEEDANCE_PRIOR_WEIGHT = 2.0
Tags = Mapping[str, str]
RECENT_LATENCIES = 2048
"""How many recent latencies a latency target keeps to report its realised percentile."""
MAX_STORED_COUNT = 2**53
"""The largest magnitude a stored count or period may have (a float holds every integer up to it): beyond it, the
state was damaged (reports and periods overflow a float), and it does not load."""
CLOCK_STEP_BACK_S = 60.0
"""A clock reading this far behind a scope's last one, or a spend period's start, means the clock was set back
(it ran ahead): the pacer starts from the new reading rather than wait for real time to catch up."""


def _booked(decision: Decision) -> float:
    """The cost booked when a decision is made: the router's expected cost of the chosen model (0 if unknown)."""
    if len(decision.expected_cost_usd) != len(decision.models):
        return 0.0
    return float(decision.expected_cost_usd[decision.models.index(decision.model)])


class _Scope:
    """The traffic of one scope (all requests, or one tenant's): counters, gap estimate, one control per target."""

    def __init__(self, since: float | None = None) -> None:
        self.requests = 0
        self.spend_usd = 0.0
        self.last_time: float | None = None
        self.gap_s: float | None = None
        self.controls: dict[str, _Control] = {}
        self.since = since
        """When the scope got its targets (a tenant's; None: always, the global one): refunds of decisions made
        before are not its."""

    def set_targets(self, targets: Sequence[Target], config: BudgetConfig, now: float) -> None:
        """Keep the state of unchanged targets, retarget changed ones (same key), start new ones (at `now`)."""
        controls: dict[str, _Control] = {}
        for target in targets:
            control = self.controls.get(target.key)
            if control is None:
                control = _CONTROLS[type(target)](target, config)
                control.since = now
            else:
                control.reconfigure(config)
                if control.target != target:
                    control.retarget(target, now)
            controls[target.key] = control
        self.controls = controls

    def arrive(self, now: float) -> None:
        if self.last_time is not None and now < self.last_time - CLOCK_STEP_BACK_S:  # the clock was set back
            self.last_time = now  # no gap measured across the step (every gap read 0 until real time caught up)
        elif self.last_time is not None:
            gap = max(0.0, now - self.last_time)
            self.gap_s = gap if self.gap_s is None else self.gap_s + GAP_SMOOTHING * (gap - self.gap_s)
        self.last_time = now if self.last_time is None else max(self.last_time, now)
        self.requests += 1

    def cost_weight(self) -> float | None:
        weights = [w for c in self.controls.values() if (w := c.cost_weight()) is not None]
        return max(weights) if weights else None

    def state(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "spend_usd": self.spend_usd,
            "last_time": self.last_time,
            "gap_s": self.gap_s,
            "since": self.since,
            "targets": {key: c.state() for key, c in self.controls.items()},
        }

    def load(self, state: Mapping[str, Any], *, where: str = "", dropped: bool = False) -> dict[str, Any]:
        """`where`: the scope's prefix in the text grammar (`@acme:`) for the log; `dropped`: the stored config of
        this scope lost targets this version refuses: their states are not loaded but returned, as stored (target
        key → state), for `BudgetPacer.state` to store again."""
        self.requests = _count(state["requests"], f"{where}requests")
        self.spend_usd = float(state["spend_usd"])
        if not (math.isfinite(self.spend_usd) and self.spend_usd >= 0.0):
            say("budget state: %sthe stored spend %r is not a finite number ≥ 0; reset to 0", where, self.spend_usd)
            self.spend_usd = 0.0
        self.last_time = _opt_float(state["last_time"])
        self.gap_s = _opt_float(state["gap_s"])
        self.since = _opt_time(state.get("since"))  # a state saved before it was kept: always, as then
        if self.since is not None and not math.isfinite(self.since):
            say("budget state: %sthe stored time the scope got its targets %r is not finite; reset: always",
                where, self.since)
            self.since = None
        if self.last_time is not None and not math.isfinite(self.last_time):
            say("budget state: %sthe stored time of the last request %r is not finite; reset: the next request "
                "sets it", where, self.last_time)
            self.last_time = None
        if self.gap_s is not None and not (math.isfinite(self.gap_s) and self.gap_s >= 0.0):
            say("budget state: %sthe stored mean gap between requests %r is not a finite number ≥ 0; reset: the "
                "next requests measure it again", where, self.gap_s)
            self.gap_s = None
        unknown = set(state["targets"]) - set(self.controls)
        if unknown and not dropped:
            raise InvalidInput(f"budget state has targets its config does not: {sorted(unknown)}")
        for key, control_state in state["targets"].items():
            if key in self.controls:
                self.controls[key].load(control_state, where)
        return {key: copy.deepcopy(state["targets"][key]) for key in state["targets"] if key in unknown}

    def report(self, now: float, cost_weight: float | None) -> dict[str, Any]:
        controls = [c.at(now) for c in self.controls.values()]  # a period that ended: the next one, as it will be
        return {
            "requests": self.requests,
            "spend_usd": self.spend_usd,
            "cost_weight": cost_weight,
            "exhausted": any(c.exhausted() for c in controls),
            "targets": [c.report(now) for c in controls],
        }


def _refunded(delta: float, booked_at: float, since: float | None) -> bool:
    """Whether a correction `delta` of a decision booked at `booked_at` counts where counting started at `since` (a
    tenant scope's or cost target's start, a spend period's; None: always): a refund (`delta` < 0) only of a
    booking made since; money paid beyond a booking (`delta` ≥ 0) always."""
    return delta >= 0.0 or since is None or booked_at >= since


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number (`targets.finite_number`: not a bool, not an int beyond a
    float's range), else None."""
    return float(value) if finite_number(value) else None


def _opt_time(value: Any) -> float | None:
    """A stored `since`: None, or a number as a float; anything else (a string, 10**400) NaN, which loading resets
    with a warning, as it does a non-finite time (a damaged `since` does not cost the state its spend)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            return float(value)
    return math.nan


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _count(value: Any, name: str) -> int:
    """A stored count, refused (InvalidInput: the state does not load) when its magnitude is over `MAX_STORED_COUNT`."""
    count = int(value)
    if abs(count) > MAX_STORED_COUNT:
        raise InvalidInput(f"budget state: the stored {name}, an integer of {len(str(abs(count)))} digits, is beyond "
                           "±2**53 (a damaged state)")
    return count


class _Control:
    """The multiplier and the realised value of one target. Subclasses override what their target needs."""

    persisted: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]] = ()
    """The attributes `state()` saves and `load()` restores, each with the function that checks its type."""

    def __init__(self, target: Target, config: BudgetConfig) -> None:
        self.target: Target = target
        self.config = config

    def roll(self, now: float) -> None:
        """Start a new period when `now` is past the current one."""

    def at(self, now: float) -> _Control:
        """This control as a request at `now` finds it (a spend period that ended: the next one), leaving it as it
        is: what a report reads."""
        return self

    def reconfigure(self, config: BudgetConfig) -> None:
        """The settings changed (`BudgetPacer.configure`); the target is kept."""
        self.config = config

    def cost_weight(self) -> float | None:
        """This target's λ, or None when it is not a cost target (or has not started)."""
        return None

    def start(self, default_cost_weight: float) -> None:
        """A cost target's λ starts at the router's default λ, on its first request."""

    def penalize(self, pacer: BudgetPacer, models: Sequence[ModelSpec], extra: np.ndarray, allowed: np.ndarray) -> None:
        """Add this target's penalty per model to `extra`, clear `allowed` for excluded models (in place)."""

    def exhausted(self) -> bool:
        return False

    def on_decision(self, scope: _Scope, now: float, decision: Decision, booked: float, tags: Tags) -> None:
        """A decision of the scope was made; `booked` is its expected cost."""

    def on_cost(self, scope: _Scope, delta: float, booked_at: float) -> None:
        """The real cost of a decision booked at `booked_at` arrived; `delta` = real − booked (`_refunded`)."""

    def on_latency(self, latency_s: float) -> None:
        """The latency of a decision of the scope was reported."""

    since: float | None = None
    """When the target was set (None: before this was kept; `_refunded`); an average cost's, when its value changed."""

    def retarget(self, target: Target, now: float) -> None:
        """The target's value changed (same key) at `now`: keep what still applies, restart the realised value."""
        self.target = target

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _ in self.persisted}

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        """Restore what `state()` saved; `where`: the scope's prefix (`@acme:`) for the log. A stored amount in USD
        that is not a finite number ≥ 0, or a time that is not finite (NaN compares false: a NaN period spend never
        reached its limit, and the report it entered could not be encoded), is reset with a warning (`_unusable`)."""
        for name, convert in self.persisted:
            value = convert(state[name])
            if isinstance(value, int) and not isinstance(value, bool):  # a count or a period
                _count(value, f"{where}{self.target} {name}")
            amount, time_ = name.endswith("_usd"), name in ("origin", "plan_time", "since")  # λ, floor, μ: own checks
            usable = math.isfinite(value) and (value >= 0.0 or time_) if isinstance(value, float) else True
            if (amount or time_) and not usable:
                value = self._unusable(name, value, where)
            setattr(self, name, value)

    def _unusable(self, name: str, value: float, where: str) -> float | None:
        """What a stored `name` that is not usable (`value`) is reset to: a time to None (`origin`, `plan_time`: set
        again by the next request; `since`: every refund counts), an amount to 0; a spend target's period spend counts
        as its whole budget."""
        reset: float | None = 0.0 if name.endswith("_usd") else None
        say("budget state: %s%s: the stored %s = %r is not a finite number%s; reset to %r", where, self.target, name,
            value, " ≥ 0" if name.endswith("_usd") else "", reset)
        return reset

    def report(self, now: float) -> dict[str, Any]:
        return {"target": str(self.target), "kind": self.target.kind}


class _CostControl(_Control):
    """Shared by the cost targets: λ in log space, projected on [floor, max_cost_weight].

    The floor is the larger of `min_cost_weight` and ε / (ĉ_max − ĉ_min), ε = `negligible_penalty`, smoothed over
    the scope's decisions (EWMA of its log, β = 1/32): below it the whole spread of a request's costs is worth
    less than ε quality points, decisions no longer change, and a slack target would only let λ sink further
    and take long to climb back when it binds again (integrator wind-up).
    """

    lam: float | None = None
    log_floor: float | None = None

    def _bounds(self) -> tuple[float, float]:
        """[floor, max_cost_weight] in linear space (no spread floor while λ is frozen: `cost_step` = 0)."""
        low, high = self.config.min_cost_weight, self.config.max_cost_weight
        if self.log_floor is not None and self.config.cost_step > 0.0:  # exp(log high) cannot overflow
            low = min(max(low, math.exp(min(self.log_floor, math.log(high)))), high)
        return low, high

    def _project(self, lam: float) -> float:
        low, high = self._bounds()
        return min(max(lam, low), high)

    def cost_weight(self) -> float | None:
        return None if self.lam is None else self._project(self.lam)

    def reconfigure(self, config: BudgetConfig) -> None:
        """`cost_step = 0` freezes λ at the router's default, also where it had moved: set so, λ starts again there."""
        if config.cost_step == 0.0 and self.config.cost_step != 0.0:
            self.lam = None
        super().reconfigure(config)

    def start(self, default_cost_weight: float) -> None:
        if self.lam is None or self.config.cost_step == 0.0:  # frozen (the hard cap): the router's default
            self.lam = self._project(default_cost_weight)

    def see_costs(self, decision: Decision) -> None:
        """Track the floor from the spread of the decision's expected costs."""
        costs = decision.expected_cost_usd
        spread = max(costs) - min(costs) if costs else 0.0
        ratio = self.config.negligible_penalty / spread if spread > 0.0 else 0.0
        if 0.0 < ratio < math.inf:  # a spread that overflows or underflows the ratio moves no floor
            x = math.log(ratio)
            self.log_floor = x if self.log_floor is None else self.log_floor + GAP_SMOOTHING * (x - self.log_floor)

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        """As saved, except a λ that is not a finite number > 0 (NaN would make every later λ NaN, ≤ 0 has no log)
        and a floor that is not finite: reset with a warning, λ to start again at the router's default on the next
        request (as a new target's does), the floor to be set again by the decisions' costs. Under `cost_step = 0`
        λ is the router's default, whatever was stored (an older version's moved λ): not loaded, as after a PUT."""
        super().load(state, where)
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam > 0.0):
            say("budget state: %s%s: the stored multiplier λ = %r is not a finite number > 0; reset: it "
                "starts again at the router's default λ", where, self.target, self.lam)
            self.lam = None
        if self.config.cost_step == 0.0:  # frozen at the router's default: a λ stored moved is not the next one's
            self.lam = None
        if self.log_floor is not None and not math.isfinite(self.log_floor):
            say("budget state: %s%s: the stored floor log λ = %r is not finite; reset: the decisions' costs "
                "set it again", where, self.target, self.log_floor)
            self.log_floor = None

    def step(self, gradient: float) -> None:
        """log λ ← clip(log λ + η·g); g = ±inf (a tiny scale) clips to a bound, NaN (inf − inf) moves nothing."""
        if self.lam is None or self.config.cost_step == 0.0 or math.isnan(gradient):
            return
        low, high = self._bounds()
        x = math.log(self.lam) + self.config.cost_step * gradient
        self.lam = low if x <= math.log(low) else high if x >= math.log(high) else math.exp(x)

    def rescale(self, factor: float) -> None:
        """A changed target's first guess, λ·old/new (as if cost ∝ 1/λ); the dual steps correct it."""
        if self.lam is not None and self.config.cost_step > 0.0:
            self.lam = self._project(self.lam * factor)


class _AvgCostControl(_CostControl):
    persisted = (("lam", _opt_float), ("log_floor", _opt_float), ("requests", int), ("spend_usd", float),
                 ("since", _opt_time))
    target: AvgCost

    def __init__(self, target: Target, config: BudgetConfig) -> None:
        super().__init__(target, config)
        self.requests = 0
        self.spend_usd = 0.0

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        """As `_CostControl.load`; a state saved before `since` was kept has None (every refund counts, as then)."""
        super().load({"since": None, **state}, where)

    def on_decision(self, scope: _Scope, now: float, decision: Decision, booked: float, tags: Tags) -> None:
        self.see_costs(decision)
        self.requests += 1
        self.spend_usd += booked
        self.step((booked - self.target.usd) / self.target.usd)

    def on_cost(self, scope: _Scope, delta: float, booked_at: float) -> None:
        if _refunded(delta, booked_at, self.since):
            self.spend_usd += delta
            self.step(delta / self.target.usd)

    def retarget(self, target: Target, now: float) -> None:
        assert isinstance(target, AvgCost)
        self.rescale(self.target.usd / target.usd)
        super().retarget(target, now)
        self.requests, self.spend_usd, self.since = 0, 0.0, now

    def report(self, now: float) -> dict[str, Any]:
        realised = self.spend_usd / self.requests if self.requests else None
        return {
            **super().report(now),
            "value": self.target.usd,
            "realized": realised,
            "holds": None if realised is None else realised <= self.target.usd,
            "multiplier": self.cost_weight(),
            "requests": self.requests,
        }


class _SpendControl(_CostControl):
    persisted = (
        ("lam", _opt_float),
        ("log_floor", _opt_float),
        ("period", _opt_int),
        ("spend_usd", float),
        ("origin", _opt_float),
        ("plan_time", _opt_float),
        ("left_period", _opt_int),
        ("left_usd", float),
        ("entered_usd", float),
        ("since", _opt_time),
    )
    target: Spend

    def __init__(self, target: Target, config: BudgetConfig) -> None:
        super().__init__(target, config)
        self.period: int | None = None
        self.spend_usd = 0.0
        self.origin: float | None = None
        """When the target saw its first request: its plan starts there, not at the start of that period."""
        self.plan_time: float | None = None
        """Up to when the plan's allowance has been credited (None before the first request)."""
        self.left_period: int | None = None
        """The period the target was in before the current one (None before a change of period)."""
        self.left_usd = 0.0
        """The spend counted in `left_period` when the target left it."""
        self.entered_usd = 0.0
        """The spend counted in the current period when the target entered it (what was booked since: the rest)."""

    def period_start(self) -> float:
        return (self.period or 0) * self.target.period_s

    def at(self, now: float) -> _Control:
        view = copy.copy(self)  # its attributes are numbers: rolling the copy leaves this one as it is
        if view.period is not None:
            view.roll(now)
        return view

    def roll(self, now: float) -> None:
        """A new period when `now` is past the current one. A period entered under a clock that ran ahead (set back
        since: `now` over `CLOCK_STEP_BACK_S` before its start) gives way to the period of `now`; it waited until
        real time reached it (a year's step: a year). No change of period loses spend to a clock step:

            entering the period it left last:   spend = spend counted there when it left + spend booked since
            moving back to another period:      spend kept (booked in real time since the step: the cautious reading)
            entering a later period:            spend = 0 (a new period)

        so a clock set back wrongly then set right keeps the day's spend (and what was booked meanwhile), and one that
        ran ahead then was set right gets the spend of the period before the step back, plus what was booked meanwhile.
        A period returned to is forgotten (its spend is in the current one). Moving back, the plan's times are capped
        at `now`. A wall clock alone cannot tell a step back of exactly one period that is never corrected from one set
        right later: the next real change of period then counts the earlier period's spend too (cautious: it binds
        early, never late)."""
        period = math.floor(now / self.target.period_s)
        if self.period is None:
            self.period, self.spend_usd, self.entered_usd = period, 0.0, 0.0
            return
        step_back = period < self.period and now < self.period_start() - CLOCK_STEP_BACK_S
        if period <= self.period and not step_back:
            return
        returning = period == self.left_period
        if returning:
            spend = self.left_usd + max(0.0, self.spend_usd - self.entered_usd)
        elif step_back:
            spend = self.spend_usd
        else:
            spend = 0.0
        # a period returned to has its spend folded in: forgotten, or the real change of period into the one left
        # (a clock run ahead, set right) would count what was booked there, and since, a second time
        self.left_period, self.left_usd = (None, 0.0) if returning else (self.period, self.spend_usd)
        self.period, self.spend_usd, self.entered_usd = period, spend, spend
        if step_back:
            self.plan_time = None if self.plan_time is None else min(self.plan_time, now)
            self.origin = None if self.origin is None else min(self.origin, now)

    def _unusable(self, name: str, value: float, where: str) -> float | None:
        """As `_Control._unusable`, except a period's spend: unknown, it counts as the whole budget B (the
        target is exhausted until its next period or a PUT: cautious, it binds early, never late). So does the
        spend of the period it left (`left_usd`, counted when the clock returns to that period). The spend counted
        when it entered this one (`entered_usd`) is reset to 0: all of the period's spend then counts as booked
        since, again the cautious reading."""
        if name not in ("spend_usd", "left_usd"):
            return super()._unusable(name, value, where)
        what = "spend of the period" if name == "spend_usd" else "spend of the period it left"
        say("budget state: %s%s: the stored %s %r is not a finite number ≥ 0; counted as the whole budget, %r USD%s",
            where, self.target, what, value, self.target.usd, ", until the next period" if name == "spend_usd" else "")
        return self.target.usd

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        """As `_CostControl.load`; a state stored before the period left was kept (no `left_period`) has none (its
        `entered_usd`, not stored either, is then the period's spend as loaded, not said twice when unusable)."""
        defaults = {"left_period": None, "left_usd": 0.0, "entered_usd": 0.0, "since": None}
        super().load({**defaults, **state}, where)
        if "entered_usd" not in state:
            self.entered_usd = self.spend_usd

    def limit(self) -> float:
        """B; pro rata in the period in which the target started, since it counts spend from then on."""
        start = self.period_start()
        if self.origin is None or self.origin <= start:
            return self.target.usd
        return self.target.usd * (max(0.0, start + self.target.period_s - self.origin) / self.target.period_s)

    def exhausted(self) -> bool:
        return self.spend_usd >= self.limit()

    def _scale(self, scope: _Scope) -> float | None:
        """ρ̄ = r·τ̂, the budget of one request at the current traffic (floored at B·10⁻⁶ for a frozen clock);
        None (no step) unless it is a positive finite number (`Spend` refuses a B whose B·10⁻⁶ underflows)."""
        if scope.gap_s is None:
            return None
        scale = max(self.target.rate * scope.gap_s, self.target.usd * 1e-6)
        return scale if 0.0 < scale < math.inf else None

    def on_decision(self, scope: _Scope, now: float, decision: Decision, booked: float, tags: Tags) -> None:
        self.see_costs(decision)
        allowance = 0.0
        if self.plan_time is not None and self.plan_time > now + CLOCK_STEP_BACK_S:  # credited under a clock ahead
            self.plan_time = now
        if self.plan_time is not None:
            allowance = self.target.rate * max(0.0, now - max(self.plan_time, self.period_start()))
        self.plan_time = now if self.plan_time is None else max(self.plan_time, now)
        self.origin = now if self.origin is None else self.origin
        was_exhausted = self.exhausted()
        self.spend_usd += booked
        scale = self._scale(scope)
        if scale is not None and not was_exhausted:
            self.step((booked - allowance) / scale)

    def on_cost(self, scope: _Scope, delta: float, booked_at: float) -> None:
        if not _refunded(delta, booked_at, max(self.period_start(), -math.inf if self.since is None else self.since)):
            return
        was_exhausted = self.exhausted()
        self.spend_usd += delta
        scale = self._scale(scope)
        if scale is not None and not was_exhausted:
            self.step(delta / scale)

    def retarget(self, target: Target, now: float) -> None:
        assert isinstance(target, Spend)
        self.rescale(self.target.usd / target.usd)
        super().retarget(target, now)

    def report(self, now: float) -> dict[str, Any]:
        start = self.period_start()
        plan_usd = 0.0 if self.origin is None else self.target.rate * max(0.0, now - max(start, self.origin))
        return {
            **super().report(now),
            "value": self.target.usd,
            "realized": self.spend_usd,
            "holds": self.spend_usd <= self.limit(),
            "limit_usd": self.limit(),
            "multiplier": self.cost_weight(),
            # before the first request there is no period yet (not one that started in 1970)
            "period_start": None if self.period is None else start,
            "period_end": None if self.period is None else start + self.target.period_s,
            "plan_usd": min(plan_usd, self.limit()),
            "exhausted": self.exhausted(),
        }


class _PenaltyControl(_Control):
    """Shared by the share and latency targets: a multiplier μ ≥ 0 on their penalty."""

    mu: float

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        """As saved, except a μ that is not a finite number ≥ 0 (NaN or inf made every request's scores NaN or
        -inf, and every route failed until a restart): reset to 0 with a warning, as a new target's."""
        super().load(state, where)
        if not (math.isfinite(self.mu) and self.mu >= 0.0):
            say("budget state: %s%s: the stored multiplier μ = %r is not a finite number ≥ 0; reset to 0", where,
                self.target, self.mu)
            self.mu = 0.0


class _ShareControl(_PenaltyControl):
    persisted = (("mu", float), ("requests", int), ("hits", int))
    target: Share

    def __init__(self, target: Target, config: BudgetConfig) -> None:
        super().__init__(target, config)
        self.mu = 0.0
        self.requests = 0
        self.hits = 0

    def penalize(self, pacer: BudgetPacer, models: Sequence[ModelSpec], extra: np.ndarray, allowed: np.ndarray) -> None:
        mask = np.array([self.target.matches_spec(m) for m in models], dtype=bool)
        extra[mask] += self.mu
        if self.target.max_share == 0.0 and (allowed & ~mask).any():
            allowed &= ~mask

    def on_decision(self, scope: _Scope, now: float, decision: Decision, booked: float, tags: Tags) -> None:
        hit = self.target.matches(decision.model, tags)
        self.requests += 1
        self.hits += hit
        self.mu = max(0.0, self.mu + self.config.share_step * (hit - self.target.max_share))

    def retarget(self, target: Target, now: float) -> None:
        super().retarget(target, now)
        self.requests, self.hits = 0, 0

    def report(self, now: float) -> dict[str, Any]:
        realised = self.hits / self.requests if self.requests else None
        return {
            **super().report(now),
            "value": self.target.max_share,
            "realized": realised,
            "holds": None if realised is None else realised <= self.target.max_share,
            "multiplier": self.mu,
            "requests": self.requests,
        }


class _LatencyControl(_PenaltyControl):
    persisted = (("mu", float), ("observations", int), ("over", int))
    target: Latency

    def __init__(self, target: Target, config: BudgetConfig) -> None:
        super().__init__(target, config)
        self.mu = 0.0
        self.observations = 0
        self.over = 0
        self.recent: deque[float] = deque(maxlen=RECENT_LATENCIES)

    def penalize(self, pacer: BudgetPacer, models: Sequence[ModelSpec], extra: np.ndarray, allowed: np.ndarray) -> None:
        if self.mu > 0.0:
            extra += self.mu * pacer.exceedance(models, self.target.max_s)

    def on_latency(self, latency_s: float) -> None:
        slow = latency_s > self.target.max_s
        self.observations += 1
        self.over += slow
        self.recent.append(latency_s)
        self.mu = max(0.0, self.mu + self.config.latency_step * (slow - self.target.allowed_over))

    def retarget(self, target: Target, now: float) -> None:
        super().retarget(target, now)
        self.observations, self.over = 0, 0
        self.recent.clear()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "recent": list(self.recent)}

    def load(self, state: Mapping[str, Any], where: str = "") -> None:
        super().load(state, where)
        self.recent = deque((float(x) for x in state["recent"]), maxlen=RECENT_LATENCIES)
        if not all(math.isfinite(x) and x >= 0.0 for x in self.recent):
            say("budget state: %s%s: the stored recent latencies are not all finite numbers ≥ 0; reset: the next "
                "requests measure them again", where, self.target)
            self.recent.clear()

    def report(self, now: float) -> dict[str, Any]:
        realised = float(np.percentile(list(self.recent), self.target.percentile)) if self.recent else None
        return {
            **super().report(now),
            "value": self.target.max_s,
            "realized": realised,
            "holds": None if realised is None else realised <= self.target.max_s,
            "multiplier": self.mu,
            "fraction_over": self.over / self.observations if self.observations else None,
            "observations": self.observations,
            "window": len(self.recent),
        }


_CONTROLS: dict[type, type[_Control]] = {
    AvgCost: _AvgCostControl,
    Spend: _SpendControl,
    Share: _ShareControl,
    Latency: _LatencyControl,
}


def _exceedance_stats(threshold: str, stats: Mapping[str, Any]) -> dict[str, list[float]]:
    """A latency threshold's stored statistics per model, [n, over] (discounted counts): a model's that are not two
    finite numbers ≥ 0 are reset with a warning (as a new model's: the prior alone), else every later route with
    them raised."""
    out = {}
    for model, pair in stats.items():
        values = [float(x) for x in pair]
        if len(values) == 2 and all(math.isfinite(x) and x >= 0.0 for x in values):
            out[str(model)] = values
        else:
            say("budget state: the stored latency statistics of %r over %s s, %r, are not two finite numbers ≥ 0; "
                "reset", model, threshold, pair)
    return out


@dataclass
class _LeftOut:
    """What `BudgetPacer.load` left out of a stored state (targets this version refuses), as stored, for `state()`
    to store again unchanged, so that a version that takes them (an upgrade, a newer replica) paces them on from
    their stored spend and λ: the config as stored (refused targets and settings included), the refused targets'
    control states per scope (None: the global one; else the tenant), the scopes whose every target was refused
    (tenant as stored → scope state) and the exceedance statistics of latency thresholds no loaded target has.
    Kept while the pacer paces that config: a new one (`configure`) drops it."""

    config: Mapping[str, Any]
    texts: list[str] = dataclass_field(default_factory=list)
    """The left-out targets' texts as the warning names them, a tenant's prefixed `@tenant:` (`left_out`)."""
    targets: dict[str | None, dict[str, Any]] = dataclass_field(default_factory=dict)
    tenants: dict[str, Any] = dataclass_field(default_factory=dict)
    exceedance: dict[str, Any] = dataclass_field(default_factory=dict)

    def add_to(self, state: dict[str, Any], stored: Any = None) -> dict[str, Any]:
        """`state` (a `state()`) with what was left out put back, as stored (copies). `stored`: the state row as
        stored now (decoded), if known: when it holds the same config, a process that paces the left-out targets (a
        newer replica) may have stored them since this one loaded them (or it followed their config, `configure_
        stored`, without their states), so what this pacer's state lacks is taken from it as stored now."""
        config = copy.deepcopy(dict(self.config))
        if isinstance(stored, Mapping) and stored.get("format") == STATE_FORMAT and stored.get("config") == config:
            try:
                return _with_what_it_lacks({**state, "config": config}, stored)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:  # ValueError: dict([[1, 2, 3]])
                log.warning("the stored budget state's left-out targets were not read (%s); saved as loaded", exc)
        state["config"] = config
        for tenant, targets in self.targets.items():
            scope = state["global"] if tenant is None else state["tenants"].get(tenant)
            if scope is not None:
                scope["targets"] = {**copy.deepcopy(targets), **scope["targets"]}
        for name, scope_state in self.tenants.items():
            state["tenants"].setdefault(name, copy.deepcopy(scope_state))
        for threshold, stats in self.exceedance.items():
            state["exceedance"].setdefault(threshold, copy.deepcopy(stats))
        return state


def _texts(dropped: Mapping[str | None, Sequence[str]]) -> list[str]:
    """`BudgetConfig.from_stored`'s left-out targets per scope as one list of texts, a tenant's prefixed `@tenant:`."""
    return [text if tenant is None else f"@{tenant}:{text}" for tenant, texts in dropped.items() for text in texts]


def _with_what_it_lacks(state: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """`state` with what `stored` (a state of the same config) has and it lacks, copied: the targets' states of its
    scopes, its tenants' scopes and its latency thresholds' statistics (the targets this version left out)."""
    def scope(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
        return {**mine, "targets": {**copy.deepcopy(dict(theirs["targets"])), **mine["targets"]}}

    tenants = dict(state["tenants"])
    for name, theirs in stored["tenants"].items():
        tenants[name] = scope(tenants[name], theirs) if name in tenants else copy.deepcopy(theirs)
    return {**state, "global": scope(state["global"], stored["global"]), "tenants": tenants,
            "exceedance": {**copy.deepcopy(dict(stored["exceedance"])), **state["exceedance"]}}


class BudgetPacer:
    """Holds the targets of a `BudgetConfig` for a `Router` (its `pacer=`): see the module docstring.

    Thread-safe (one lock). `clock` returns seconds (Unix time by default); inject a simulated clock for tests
    and simulations (a clock other than the decisions' `created_at`'s overrides `booked_at`, see the module
    docstring). `state()`/`load()` round-trip the config and everything learned through JSON.

    Examples:
        >>> from bandit_router.budgets import BudgetConfig, BudgetPacer
        >>> pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.0005", "@acme:spend_usd=50/1d"]))
        >>> sorted(pacer.report()["tenants"])
        ['acme']
    """

    def __init__(self, config: BudgetConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._config = BudgetConfig()
        self._global = _Scope()
        self._tenants: dict[str, _Scope] = {}
        self._tags: dict[str, Mapping[str, str]] = {}
        self._exceedance: dict[float, dict[str, list[float]]] = {}
        self._left_out: _LeftOut | None = None
        self.configure(config or BudgetConfig())

    # -- targets ----------------------------------------------------------------------------------------
    @property
    def config(self) -> BudgetConfig:
        return self._config

    def configure(self, config: BudgetConfig) -> None:
        """Replace the targets and settings; effective from the next request. A target whose value changed keeps
        its multiplier (λ rescaled by old/new for cost targets) and its period's spend; a removed one is gone, and
        so is what a stored state's loading left out (`load`)."""
        self._configure(config, None)

    def configure_stored(self, data: Mapping[str, Any]) -> dict[str | None, list[str]]:
        """`configure` with stored targets (`BudgetConfig.from_stored`: what this version refuses is left out, with
        a warning), which `state()` then stores as stored, refused targets included. What the loaded state left
        out stays when `data` is the config it was stored with. Returns the refused targets' texts per scope."""
        config, dropped = BudgetConfig.from_stored(data)
        with self._lock:
            left = self._left_out
            if left is None or left.config != data:
                left = _LeftOut(copy.deepcopy(dict(data)), _texts(dropped)) if dropped else None
            self._configure(config, left)
        return dropped

    def adopt_since(self, state: Mapping[str, Any]) -> None:
        """Take when the targets were set (each tenant scope's and target's `since`) from `state`, a `state()` of the
        config now paced that another process stored with it (a PUT stores both at once): a process that follows
        the PUT later than the one that took it then drops the same refunds. What `state` lacks, or holds as no
        finite number, is left as it is."""
        with self._lock:
            tenants = state.get("tenants")
            for name, scope in [(None, self._global), *self._tenants.items()]:
                saved = state.get("global") if name is None else (
                    tenants.get(name) if isinstance(tenants, Mapping) else None)
                if not isinstance(saved, Mapping):
                    continue
                if name is not None and (since := _finite(saved.get("since"))) is not None:
                    scope.since = since
                targets = saved.get("targets")
                for key, control in scope.controls.items():
                    target_state = targets.get(key) if isinstance(targets, Mapping) else None
                    if any(field == "since" for field, _ in control.persisted) and isinstance(target_state, Mapping) \
                            and (since := _finite(target_state.get("since"))) is not None:
                        control.since = since

    def _configure(self, config: BudgetConfig, left_out: _LeftOut | None) -> None:
        if not isinstance(config, BudgetConfig):
            raise InvalidInput(f"config must be a BudgetConfig (BudgetConfig.from_mapping({{...}}) reads a [budgets] "
                               f"table, BudgetConfig.from_strings([...]) targets as text), got "
                               f"{type(config).__name__}")  # was "configure needs a BudgetConfig": no such name
        with self._lock:
            self._left_out = left_out
            self._config = config
            now = self._clock()
            self._global.set_targets(config.targets, config, now)
            tenants = {}
            for name, targets in config.tenants.items():
                scope = self._tenants.get(name) or _Scope(now)
                scope.set_targets(targets, config, now)
                tenants[name] = scope
            self._tenants = tenants
            thresholds = {
                c.target.max_s for s in self._scopes_all() for c in s.controls.values() if isinstance(c.target, Latency)
            }
            self._exceedance = {t: self._exceedance.get(t, {}) for t in sorted(thresholds)}

    def left_out(self) -> list[str]:
        """The stored targets this version refuses, left out of the pacing and stored again as stored (`load`,
        `configure_stored`), a tenant's prefixed `@tenant:`; empty when none (a PUT of `config` drops them)."""
        with self._lock:
            return [] if self._left_out is None else list(self._left_out.texts)

    def set_targets(self, targets: Sequence[Target | str], *, tenant: str | None = None) -> None:
        """Replace the targets of one scope (all traffic, or `tenant`'s); an empty list removes a tenant's."""
        parsed = [parse_target(t) if isinstance(t, str) else t for t in targets]
        self.configure(self._config.with_targets(parsed, tenant))

    @property
    def passive(self) -> bool:
        """No scope has a target: `adjust` then gives every request the same prices whatever was decided before
        (the requested or default λ, no extra penalty, every model allowed), so decisions can be priced
        together (`Router.route_many`)."""
        return not any(scope.controls for scope in self._scopes_all())

    def know_models(self, models: Sequence[ModelSpec]) -> None:
        """Remember the models' tags, which a tag share (`share:tag:tier=large`) matches a booked decision's model
        by: a decision booked without this pacer pricing its model first (another process's, read from the log; a
        model the caller named; a named router's answer) is then counted as the hit it is. `Router` calls it with
        every model it holds when given the pacer, with each model it adds and with those a snapshot it restores
        holds; `adjust` also learns them."""
        with self._lock:
            for spec in models:
                self._tags[spec.name] = spec.tags

    # -- the Pacer protocol -----------------------------------------------------------------------------
    def adjust(
        self,
        context: Context,
        models: Sequence[ModelSpec],
        expected_cost: np.ndarray,
        cost_weight: float | None,
        default_cost_weight: float,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """(λ for this request, extra penalty per model (K,), allowed mask per model (K,))."""
        with self._lock:
            now = self._clock()
            extra = np.zeros(len(models))
            allowed = np.ones(len(models), dtype=bool)
            weights: list[float] = []
            exhausted = False
            for scope in self._scopes(context.attributes.get("tenant")):
                for control in scope.controls.values():
                    control.roll(now)
                    control.start(default_cost_weight)
                    weight = control.cost_weight()
                    if weight is not None:
                        weights.append(weight)
                    control.penalize(self, models, extra, allowed)
                    exhausted = exhausted or control.exhausted()
            for spec in models:
                self._tags[spec.name] = spec.tags
            if exhausted:
                allowed = self._guard(models, np.asarray(expected_cost, dtype=np.float64), allowed)
            if cost_weight is not None:
                lam = float(cost_weight)
            else:
                lam = max(weights) if weights else float(default_cost_weight)
            return lam, extra, allowed

    def current_time(self) -> float:
        """The pacer's clock (Unix time by default): when a booking without `at` happens."""
        return self._clock()

    def observe(self, decision: Decision, cost_usd: float | None, latency_s: float | None = None, *,
                at: float | None = None) -> None:
        """`cost_usd` None: `decision` was just made (book its expected cost, count it in the shares).
        Otherwise its real cost (and maybe latency) arrived: correct the booking by real − expected. `at`: when it
        happened, if not now (a start booking what was stored before it: in the budget period it happened in)."""
        with self._lock:
            now = self._clock() if at is None else at
            scopes = self._scopes(decision.context.attributes.get("tenant"))
            booked = _booked(decision)
            if cost_usd is None:
                self._decided(scopes, now, decision, booked)
            else:
                self._corrected(scopes, now, float(cost_usd) - booked, self.booked_at(decision))
            if latency_s is not None:
                self._observe_latency(decision.model, float(latency_s))
                for scope in scopes:
                    for control in scope.controls.values():
                        control.on_latency(float(latency_s))

    def book(self, decision: Decision, cost_usd: float, *, at: float | None = None) -> None:
        """A decision whose real cost is known when it is booked and is never corrected: every call it stands for
        was made and paid before (a named router's chain: its answers, the judge's scores, the routing LLM's
        choice), and its feedback never reaches `Router.learn`. Counted like `observe(decision, None)` (a request,
        its model in the shares), booked at `cost_usd` instead of the expected cost (`at` as for `observe`)."""
        with self._lock:
            scopes = self._scopes(decision.context.attributes.get("tenant"))
            self._decided(scopes, self._clock() if at is None else at, decision, float(cost_usd))

    def spend(self, cost_usd: float, tenant: Any = None, *, at: float | None = None) -> None:
        """Money paid that belongs to no booking: calls a request made beside the decision it booked (an LLM
        router's routing call when the policy decided; the feedback judge's call scoring a routed answer), or for a
        request that booked none (no model answered).
        Added to the spend like a correction of `cost_usd` (it moves λ; it is not a request, nor in the shares;
        `at` as for `observe`)."""
        if cost_usd == 0.0:
            return
        with self._lock:
            now = self._clock() if at is None else at
            self._corrected(self._scopes(tenant), now, float(cost_usd), now)

    def booked_at(self, decision: Decision) -> float | None:
        """When `decision` was booked, on the pacer's clock, for its correction (`_refunded`): its `created_at`
        (Unix time, as this pacer's clock by default and the service's; a process reading it from the log books it
        then or a little later). A pacer on another clock overrides it (`simulator.budgets.SimulatedPacer`); None:
        not known (not booked by this pacer: its refund is nobody's)."""
        return decision.created_at

    def _decided(self, scopes: Sequence[_Scope], now: float, decision: Decision, booked: float) -> None:
        tags = self._tags.get(decision.model, {})
        for scope in scopes:
            scope.arrive(now)
            scope.spend_usd += booked
            for control in scope.controls.values():
                control.roll(now)
                control.on_decision(scope, now, decision, booked, tags)

    @staticmethod
    def _corrected(scopes: Sequence[_Scope], now: float, delta: float, booked_at: float | None) -> None:
        """`delta` for a booking made at `booked_at` (None: not known, earlier than any), corrected at `now`."""
        made = -math.inf if booked_at is None else booked_at
        for scope in scopes:
            if _refunded(delta, made, scope.since):
                scope.spend_usd += delta
            for control in scope.controls.values():
                control.roll(now)
                control.on_cost(scope, delta, made)

    # -- reading ----------------------------------------------------------------------------------------
    def cost_weight(self, tenant: str | None = None) -> float | None:
        """The λ the pacer gives the next request of `tenant` (None: no cost target applies or none started)."""
        with self._lock:
            weights = [w for s in self._scopes(tenant) if (w := s.cost_weight()) is not None]
            return max(weights) if weights else None

    def report(self) -> dict[str, Any]:
        """Per scope: requests, booked spend, λ its requests get, and per target its value, realised value,
        whether it holds and its multiplier (spend targets: the period, the plan, exhausted). JSON-able."""
        with self._lock:
            now = self._clock()
            return {
                "time": now,
                "global": self._global.report(now, self._global.cost_weight()),
                "tenants": {name: s.report(now, self.cost_weight(name)) for name, s in self._tenants.items()},
            }

    def summary(self) -> dict[str, float]:
        """`report()` flattened to numbers (what a simulation adds to its summary record): per target
        `budget:<target>:realized`, `:value`, `:multiplier` (a tenant's target as `@tenant:<target>`), and per
        scope `budget:cost_weight` / `budget:@tenant:cost_weight`; NaN where nothing is known yet."""
        report = self.report()
        scopes = [("", report["global"])] + [(f"@{name}:", r) for name, r in report["tenants"].items()]
        out: dict[str, float] = {}
        for prefix, scope in scopes:
            out[f"budget:{prefix}cost_weight"] = _number(scope["cost_weight"])
            for target in scope["targets"]:
                for field in ("realized", "value", "multiplier"):
                    out[f"budget:{prefix}{target['target']}:{field}"] = _number(target[field])
        return out

    def exceedance(self, models: Sequence[ModelSpec], max_s: float) -> np.ndarray:
        """P̂_m(latency > max_s) per model, shape (len(models),): discounted counts and a prior worth 2 observations,
        exp(−max_s / mean) with the catalog's latency prior as the mean (1 s when it has none)."""
        stats = self._exceedance.get(max_s, {})
        out = np.empty(len(models))
        for i, spec in enumerate(models):
            n, over = stats.get(spec.name, (0.0, 0.0))
            prior = math.exp(-max_s / (spec.latency_s or 1.0))
            out[i] = (over + EXCEEDANCE_PRIOR_WEIGHT * prior) / (n + EXCEEDANCE_PRIOR_WEIGHT)
        return out

    # -- state ------------------------------------------------------------------------------------------
    def state(self, stored: Any = None) -> dict[str, Any]:
        """The config and everything learned, as plain JSON types (`json.dumps` works as is). With what the loaded
        state's targets this version refuses left out (`load`), as stored: the config as stored and their states,
        taken from `stored` (the state row as stored now, decoded) when it holds that config (`_LeftOut.add_to`)."""
        with self._lock:
            state = {
                "format": STATE_FORMAT,
                "config": self._config.to_mapping(),
                "global": self._global.state(),
                "tenants": {name: s.state() for name, s in self._tenants.items()},
                "exceedance": {
                    repr(t): {m: list(v) for m, v in stats.items()} for t, stats in self._exceedance.items()
                },
            }
            return state if self._left_out is None else self._left_out.add_to(state, stored)

    def load(self, state: Mapping[str, Any]) -> dict[str | None, list[str]]:
        """Replace the config and everything learned by a `state()` (a restart continues where it stopped).
        All or nothing: a state that does not load leaves the pacer as it was. What an older version saved and
        this one refuses is dropped with a warning, the rest loads (`BudgetConfig.from_stored`): of tenants "5" and
        "5.0" saved apart (before they were one tenant) tenant "5"; a target this version refuses goes with its
        state (and a latency threshold no loaded target has, with its exceedance statistics). What a refused target
        left out (its text in the config, its state, its tenant's scope, its threshold's statistics) is kept as
        stored, and `state()` stores it again unchanged until a new config replaces it (`configure`): a version
        that takes it paces it on from its stored spend and λ. A stored multiplier (λ, μ), floor, mean gap or last
        request time that is not a finite number (λ: > 0; μ, gap: ≥ 0) is reset, with a warning, as are recent
        latencies and a model's exceedance statistics that are not finite numbers ≥ 0 (two, for the statistics); a
        count or period beyond ±`MAX_STORED_COUNT` does not load (InvalidInput: a damaged state). Returns the refused
        targets' texts per scope (`from_stored`: None is the global one), empty when every target loaded."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidInput(f"not a budget pacer state (expected format {STATE_FORMAT!r})")
        try:
            config, dropped = BudgetConfig.from_stored(state["config"])
            fresh = BudgetPacer(config, clock=self._clock)
            left = _LeftOut(copy.deepcopy(dict(state["config"])), _texts(dropped))
            left.targets[None] = fresh._global.load(state["global"], dropped=None in dropped)
            for name, scope_state in state["tenants"].items():
                tenant = tenant_named(name)  # a state saved before `@5.0:` meant tenant 5 calls it "5.0"
                if tenant != name and tenant in state["tenants"]:
                    continue  # saved with "5" and "5.0" apart: "5" won (`BudgetConfig.from_stored`)
                if tenant not in fresh._tenants:
                    if tenant in dropped:  # every target of the tenant was dropped: kept as stored
                        left.tenants[name] = copy.deepcopy(scope_state)
                        continue
                    raise InvalidInput(f"budget state has tenant {name!r} that its config does not")
                left.targets[tenant] = fresh._tenants[tenant].load(
                    scope_state, where=f"@{tenant}:", dropped=tenant in dropped)
            saved_exceedance = {float(t): _exceedance_stats(t, stats) for t, stats in state["exceedance"].items()}
            fresh._exceedance = {t: saved_exceedance.get(t, {}) for t in fresh._exceedance}  # the loaded targets
            left.exceedance = {t: copy.deepcopy(stats) for t, stats in state["exceedance"].items()
                               if float(t) not in fresh._exceedance}
        except InvalidInput:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # Overflow: int(Infinity)
            raise InvalidInput(f"corrupt budget pacer state: {exc!r}") from exc
        with self._lock:
            self._config, self._global, self._tenants = fresh._config, fresh._global, fresh._tenants
            self._exceedance = fresh._exceedance
            self._left_out = left if dropped else None
        return dropped

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, clock: Callable[[], float] = time.time) -> BudgetPacer:
        pacer = cls(clock=clock)
        pacer.load(state)
        return pacer

    # -- internals --------------------------------------------------------------------------------------
    def _scopes(self, tenant: Any) -> list[_Scope]:
        """The global scope, and `tenant`'s when it has targets (`types.logged_tenant`: tenant 5.0 is tenant "5";
        a float beyond ±2⁵³ of a decision stored before `tenant_of` refused one, read from the log, is its text)."""
        if tenant is not None:
            scope = self._tenants.get(tenant if isinstance(tenant, str) else str(logged_tenant(tenant)))
            if scope is not None:
                return [self._global, scope]
        return [self._global]

    def _scopes_all(self) -> list[_Scope]:
        return [self._global, *self._tenants.values()]

    def _guard(self, models: Sequence[ModelSpec], expected_cost: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """The allowed mask while a budget is exhausted (never empty): see the module docstring."""
        config = self._config
        if config.guard_max_usd_per_mtok is not None:
            limit = config.guard_max_usd_per_mtok
            cheap = allowed & np.array([max(m.input_usd_per_mtok, m.output_usd_per_mtok) <= limit for m in models])
            if cheap.any():
                return np.asarray(cheap)
        if config.fallback_model is not None:
            fallback = allowed & np.array([m.name == config.fallback_model for m in models])
            if fallback.any():
                return np.asarray(fallback)
        costs = np.where(allowed, expected_cost, np.inf)
        only = np.zeros(len(models), dtype=bool)
        only[int(np.argmin(costs))] = True
        return only

    def _observe_latency(self, model: str, latency_s: float) -> None:
        for threshold, stats in self._exceedance.items():
            n, over = stats.get(model, (0.0, 0.0))
            stats[model] = [EXCEEDANCE_DECAY * n + 1.0, EXCEEDANCE_DECAY * over + (latency_s > threshold)]


