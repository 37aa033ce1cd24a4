"""Time series of the stored log from the per-minute rollup (`store/rollup.py`): what `GET /v1/stats/timeseries`
returns and the dashboard draws. One bounded read (`Reader.minute_stats`: at most buckets × models rows), a few
more when the buckets reach past the range (below), then arithmetic on a few thousand numbers; the cost does not
grow with the number of decisions.

Per bucket of `step` seconds (aligned on multiples of `step`; a bucket without decisions has zeros, and None
where a mean has nothing to average):

    decisions_per_minute, feedback_per_minute    counts ÷ the bucket's minutes (the bucket holding `until`: the
                    minutes it has lasted so far, at least one); feedback by the minute it was received
    coverage        learned ÷ decisions of the decisions made in the bucket (recent buckets rise as feedback
                    arrives); learned = learned feedback with an observed quality (`rollup.counts_as_learned`)
    lag_s           mean seconds from decision to its learned feedback
    decisions       every stored decision (traffic: also models callers named, named routers' choices and the
                    gateway's fallbacks); routed: the bandit's own choices for a request's first try
    exploration     1 − greedy ÷ routed: the share of routed decisions whose model was not the most probable one
                    (and `mean_probability`, Σ p ÷ routed: both describe only what the bandit chose)
    quality, cost_usd, reward     means over the learned feedback of the bucket's decisions
    shares[model]   the model's decisions ÷ all decisions

The buckets are aligned on `step`, so the first may start before `since` and the last end after `until` (a
`step` longer than the range: one or two buckets wider than it). The range's totals do not: `overall`, `models`
and `best_fixed` count exactly the minutes that overlap [since, until): the buckets inside the range, plus its
minutes in the buckets at its edges (`range_totals`: under one bucket at each edge, read at the longest spans
that fit).

Over the whole range, per model: requests, share, learned, mean quality, cost and reward (on-policy: of the
requests the policy sent it), and the self-normalised IPS estimate of what *always* routing to it would have
given (SNIPS: Σ r/p ÷ Σ 1/p over its learned decisions; unbiased only where every request allowed it with
p > 0). `best_fixed` is the model with the largest estimated reward among those with at least
`MIN_BEST_FIXED` learned feedbacks, or None with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..store import MinuteStats, Reader
from ..store.rollup import cover

MAX_BUCKETS = 2000
"""A request for more buckets than this is refused (ask for a larger step)."""
MIN_BEST_FIXED = 30
"""Learned feedbacks a model needs in the range before its fixed-model estimate is shown."""
MAX_TIME = 1e11
"""The largest Unix time accepted (the year 5138): minutes stay far inside a 64-bit integer."""
RANGES: dict[str, tuple[int, int]] = {"hour": (3600, 60), "day": (86400, 900), "week": (7 * 86400, 3600)}
"""The dashboard's ranges: name → (seconds, step in seconds)."""


@dataclass(frozen=True, slots=True)
class Window:
    """Buckets of `step` seconds (a multiple of 60) covering [since, until), aligned on multiples of `step`."""

    since: float
    until: float
    step: int

    @classmethod
    def of(cls, since: float, until: float, step: int) -> Window:
        """Checked: `step` a positive multiple of 60, since < until, at most `MAX_BUCKETS` buckets."""
        if not (0 <= since <= MAX_TIME and 0 <= until <= MAX_TIME):
            raise InvalidInput(f"since and until must be Unix times in seconds, from 0 to {MAX_TIME:.0f}")
        if step < 60 or step % 60:
            raise InvalidInput(f"step must be a positive multiple of 60 seconds (got {step})")
        if since >= until:
            raise InvalidInput(f"since ({since}) must be before until ({until})")
        window = cls(since, until, step)
        buckets = (window.end_minute() - window.first_minute()) // window.step_minutes
        if buckets > MAX_BUCKETS:
            raise InvalidInput(f"{buckets} buckets of {step} s; at most {MAX_BUCKETS}: ask for a larger step")
        return window

    @property
    def step_minutes(self) -> int:
        return self.step // 60

    def first_minute(self) -> int:
        m = math.floor(self.since / 60)
        return m - m % self.step_minutes

    def end_minute(self) -> int:
        """One past the last minute read (the bucket holding the range's last minute is read whole; an `until` on a
        bucket's start adds no bucket: it gave one wholly after [since, until))."""
        m = math.ceil(self.until / 60) - 1
        return m - m % self.step_minutes + self.step_minutes

    def starts(self) -> list[int]:
        """Each bucket's first minute."""
        return list(range(self.first_minute(), self.end_minute(), self.step_minutes))

    def range_minutes(self) -> tuple[int, int]:
        """(first, end): the minutes that overlap [since, until), whatever the buckets (the rollup's resolution
        is one minute): what the range's totals count."""
        first = math.floor(self.since / 60)
        return first, max(first + 1, math.ceil(self.until / 60))

    def inner_minutes(self) -> tuple[int, int]:
        """(first, end) of the buckets that lie wholly inside `range_minutes` (first ≥ end: none)."""
        first, end = self.range_minutes()
        step = self.step_minutes
        return -(-first // step) * step, end // step * step


def timeseries(reader: Reader, window: Window) -> dict[str, Any]:
    """The series and per-model totals for `window` (JSON-able; see the module docstring)."""
    rows = reader.minute_stats(window.first_minute(), window.end_minute(), window.step_minutes)
    starts = window.starts()
    index = {m: i for i, m in enumerate(starts)}
    n = len(starts)
    total = [MinuteStats(m, "") for m in starts]
    per_model: dict[str, list[int]] = {}
    # The range's totals: the buckets that lie inside it, and its minutes in the buckets at its edges.
    first, end = window.range_minutes()
    inner_first, inner_end = window.inner_minutes()
    sums: dict[str, MinuteStats] = {}
    for row in rows:
        i = index.get(row.minute)
        if i is None:
            continue
        total[i].add(row)
        per_model.setdefault(row.model, [0] * n)[i] += row.decisions
        if inner_first <= row.minute < inner_end:
            sums.setdefault(row.model, MinuteStats(0, row.model)).add(row)
    edges = [(first, end)] if inner_first >= inner_end else [(first, inner_first), (inner_end, end)]
    for lo, hi in edges:
        for name, row in range_totals(reader, lo, hi).items():
            sums.setdefault(name, MinuteStats(0, name)).add(row)
    # Per-minute rates: the bucket holding `until` has lasted only until `until` so far.
    minutes = [max(1.0, min(window.step, window.until - m * 60) / 60.0) for m in starts]
    everything = MinuteStats(0, "")
    for row in sums.values():
        everything.add(row)
    return {
        "since": window.since,
        "until": window.until,
        "step": window.step,
        "time": [m * 60 for m in starts],
        "decisions": [t.decisions for t in total],
        "routed": [t.routed for t in total],
        "decisions_per_minute": [t.decisions / span for t, span in zip(total, minutes, strict=True)],
        "feedback_per_minute": [t.feedback / span for t, span in zip(total, minutes, strict=True)],
        "coverage": [_ratio(t.learned, t.decisions) for t in total],
        "lag_s": [_ratio(t.lag_sum, t.learned) for t in total],
        "exploration": [_explored(t) for t in total],
        "quality": [_ratio(t.quality_sum, t.learned) for t in total],
        "cost_usd": [_ratio(t.cost_sum, t.learned) for t in total],
        "reward": [_ratio(t.reward_sum, t.learned) for t in total],
        "cost_weight": [_ratio(t.cost_weight_sum, t.decisions) for t in total],
        "policy_version": [t.policy_version if t.decisions else None for t in total],
        "shares": {
            model: [_ratio(c, t.decisions) or 0.0 for c, t in zip(counts, total, strict=True)]
            for model, counts in sorted(per_model.items())
        },
        "overall": _summary(everything),
        "models": [
            {"model": name, "share": _ratio(row.decisions, everything.decisions), **_summary(row), **_fixed(row)}
            for name, row in sorted(sums.items())
        ],
        "best_fixed": best_fixed(list(sums.values())),
    }


def range_totals(reader: Reader, first: int, end: int) -> dict[str, MinuteStats]:
    """Per model, the sums over the minutes `first` ≤ m < `end` (`rollup.cover`: a few bounded reads; none when
    `first` ≥ `end`)."""
    out: dict[str, MinuteStats] = {}
    for lo, hi, span in cover(first, end):
        for row in reader.minute_stats(lo, hi, span):
            out.setdefault(row.model, MinuteStats(0, row.model)).add(row)
    return out


def best_fixed(rows: list[MinuteStats]) -> dict[str, Any]:
    """The model whose SNIPS estimate of "always this model" has the largest reward, among models with at least
    `MIN_BEST_FIXED` learned feedbacks; `model` None (with `reason`) when none qualifies."""
    eligible = [r for r in rows if r.learned >= MIN_BEST_FIXED and r.ips_weight_sum > 0]
    if not eligible:
        return {"model": None, "reason": f"no model has {MIN_BEST_FIXED} learned feedbacks in this range",
                "estimator": "snips"}
    best = max(eligible, key=lambda r: r.ips_reward_sum / r.ips_weight_sum)
    return {"model": best.model, "estimator": "snips", "n": best.learned, **_fixed(best)}


def _fixed(row: MinuteStats) -> dict[str, float | None]:
    w = row.ips_weight_sum
    return {
        "fixed_quality": _ratio(row.ips_quality_sum, w),
        "fixed_cost_usd": _ratio(row.ips_cost_sum, w),
        "fixed_reward": _ratio(row.ips_reward_sum, w),
    }


def _summary(row: MinuteStats) -> dict[str, Any]:
    return {
        "decisions": row.decisions,
        "routed": row.routed,
        "feedback": row.feedback,
        "learned": row.learned,
        "coverage": _ratio(row.learned, row.decisions),
        "lag_s": _ratio(row.lag_sum, row.learned),
        "exploration": _explored(row),
        "mean_probability": _ratio(row.probability_sum, row.routed),
        "quality": _ratio(row.quality_sum, row.learned),
        "cost_usd": _ratio(row.cost_sum, row.learned),
        "reward": _ratio(row.reward_sum, row.learned),
        "policy_version": row.policy_version if row.decisions else None,
    }


def _explored(row: MinuteStats) -> float | None:
    return None if not row.routed else 1.0 - row.greedy / row.routed


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator ÷ denominator; None when there is nothing to divide by or the quotient is not finite (a sum that
    overflowed: JSON has no infinities)."""
    if not denominator:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None
