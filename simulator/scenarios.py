"""Scenarios: named events on top of any environment. Each one changes the episode's truth (what the metrics
see), what the router is told (a model added, a catalog price updated), or how feedback reaches the policy.

- `drift` — model (best by mean quality), delta (−0.5), at (0.5): from step `at` the model gets better
  (delta > 0) or worse (delta < 0).
- `new-model` — model (a dormant one, else best by mean quality), at (0.3): the model is unknown to the
  router and unavailable before `at`; then `Router.add_model`.
- `outage` — model (best by mean quality), at (0.4), until (0.6), cost_factor (0), latency_s (30): the
  model fails in the window: quality 0.
- `price-change` — model (most expensive), factor (0.2), at (0.5), announce (true): its price × factor from
  `at`; announced = the router's catalog entry is updated at that step (else only the bills change).
- `traffic-shift` — to (rarest domain), share (0.8), at (0.5): from `at`, `share` of the traffic comes from
  domain `to`, the rest keeps the old mix.
- `delayed-feedback` — mean (200 steps), dist (exponential), lost (0.1): feedback arrives after a random
  delay; a fraction never arrives.
- `noisy-feedback` — sd (0.1), flip (0.1): the policy sees quality + N(0, sd²), clipped to [0, 1], and
  1 − q with probability `flip` (an imperfect judge). The metrics keep the true quality.

`at`/`until` < 1 are fractions of the run, ≥ 1 absolute steps. A world file may set other defaults in a
`[scenarios.<name>]` table; settings given on the command line win.

Drift on 0/1 qualities keeps them 0/1: with delta > 0 a fraction `delta` of the failures become successes,
with delta < 0 a fraction |delta| of the successes become failures. On continuous qualities delta is added
(clipped to [0, 1]); in stochastic worlds it moves the success probability (same random draws).
An outage's failed call has quality 0, costs `cost_factor` × its normal cost and takes `latency_s`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.hints import quoted

from .environments.base import Environment, Episode, Event, Feedback, Mark
from .metrics import column_means
from .specs import Spec, parse_spec, step_of

SCENARIO_SALT = 303


def _mean_quality(env: Environment) -> np.ndarray:
    return column_means(env.quality[env.eval_rows])


def _mean_cost(env: Environment) -> np.ndarray:
    return column_means(env.cost_usd[env.eval_rows])


def _best_model(env: Environment) -> str:
    quality = np.where([m in env.dormant for m in env.model_names], -np.inf, _mean_quality(env))
    return env.model_names[int(np.argmax(quality))]


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario with its settings resolved against one environment."""

    name: str
    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}

    def schedule(self, env: Environment, n_steps: int) -> list[tuple[int, np.ndarray]] | None:
        """The domain mix over time (traffic-shift only)."""
        if self.name != "traffic-shift":
            return None
        base = env.weights
        if base is None:
            counts = np.bincount(env.domains[env.eval_rows], minlength=len(env.domain_names)).astype(float)
            base = counts / counts.sum()
        target = np.zeros(len(env.domain_names))
        target[env.domain_names.index(self.settings["to"])] = 1.0
        share = float(self.settings["share"])
        return [(0, base), (step_of(self.settings["at"], n_steps), share * target + (1 - share) * base)]

    def apply(self, episode: Episode, rng: np.random.Generator) -> Episode:
        return _APPLY[self.name](self, episode, rng)


def _drift(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    k, start = ep.index(s.settings["model"]), step_of(s.settings["at"], ep.n_steps)
    delta = float(s.settings["delta"])
    quality = ep.quality.copy()
    expected = ep.expected
    if expected is not None and ep.draws is not None:
        expected = expected.copy()
        expected[start:, k] = np.clip(expected[start:, k] + delta, 0.0, 1.0)
        column = (ep.draws[start:, k] < expected[start:, k]).astype(np.float64)
        quality[start:, k] = np.where(np.isfinite(expected[start:, k]), column, np.nan)
    else:
        column = quality[start:, k]
        known = column[np.isfinite(column)]
        if known.size and np.isin(known, (0.0, 1.0)).all():
            u = rng.random(len(column))
            if delta > 0:
                column = np.where((column == 0.0) & (u < delta), 1.0, column)
            else:
                column = np.where((column == 1.0) & (u < -delta), 0.0, column)
        else:
            column = np.where(np.isfinite(column), np.clip(column + delta, 0.0, 1.0), column)
        quality[start:, k] = column
    return ep.replace(quality=quality, expected=expected, marks=(*ep.marks, Mark("drift", start, ep.models[k].name)))


def _new_model(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    k, start = ep.index(s.settings["model"]), step_of(s.settings["at"], ep.n_steps)
    available = ep.available.copy()
    available[:start, k] = False
    available[start:, k] = np.isfinite(ep.quality[start:, k]) & np.isfinite(ep.cost_usd[start:, k])
    name = ep.models[k].name
    initial = tuple(m for m in ep.initial_models if m != name)
    if not initial:
        raise InvalidInput("new-model: the router needs at least one other model at the start")
    return ep.replace(
        available=available,
        initial_models=initial,
        events=(*ep.events, Event(start, "add_model", ep.models[k])),
        marks=(*ep.marks, Mark("new-model", start, name)),
    )


def _outage(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    k = ep.index(s.settings["model"])
    start, end = step_of(s.settings["at"], ep.n_steps), step_of(s.settings["until"], ep.n_steps)
    if end <= start:
        raise InvalidInput("outage: until must come after at")
    window = slice(start, end)
    known = np.isfinite(ep.quality[window, k])
    quality, cost = ep.quality.copy(), ep.cost_usd.copy()
    quality[window, k] = np.where(known, 0.0, np.nan)
    cost[window, k] = cost[window, k] * float(s.settings["cost_factor"])
    changes: dict[str, Any] = {"quality": quality, "cost_usd": cost}
    if ep.expected is not None:
        expected = ep.expected.copy()
        expected[window, k] = np.where(known, 0.0, np.nan)
        changes["expected"] = expected
    if ep.latency_s is not None:
        latency = ep.latency_s.copy()
        latency[window, k] = float(s.settings["latency_s"])
        changes["latency_s"] = latency
    return ep.replace(**changes, marks=(*ep.marks, Mark("outage", start, ep.models[k].name, end)))


def _price_change(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    k, start = ep.index(s.settings["model"]), step_of(s.settings["at"], ep.n_steps)
    factor = float(s.settings["factor"])
    cost = ep.cost_usd.copy()
    cost[start:, k] *= factor
    old = ep.models[k]
    new = ModelSpec.from_json(
        {
            **old.to_json(),
            "input_usd_per_mtok": old.input_usd_per_mtok * factor,
            "output_usd_per_mtok": old.output_usd_per_mtok * factor,
        }
    )
    events = ep.events
    if str(s.settings["announce"]).lower() in _TRUE:
        if ep.initial_models == (old.name,):  # the router re-prices a model by retiring and re-adding it
            raise InvalidInput(f"price-change: a router whose only model is {old.name!r} cannot be told a new price "
                               "(it retires and re-adds the model); announce=false changes the bills only")
        events = (*events, Event(start, "update_model", new))
    return ep.replace(cost_usd=cost, events=events, marks=(*ep.marks, Mark("price-change", start, old.name)))


def _traffic_shift(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    return ep.replace(marks=(*ep.marks, Mark("traffic-shift", step_of(s.settings["at"], ep.n_steps))))


def _delayed(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    feedback = Feedback(
        delay_mean=float(s.settings["mean"]), delay_dist=str(s.settings["dist"]), lost=float(s.settings["lost"])
    )
    return ep.replace(feedback=ep.feedback.merge(feedback))


def _noisy(s: Scenario, ep: Episode, rng: np.random.Generator) -> Episode:
    feedback = Feedback(noise_sd=float(s.settings["sd"]), flip=float(s.settings["flip"]))
    return ep.replace(feedback=ep.feedback.merge(feedback))


_APPLY: dict[str, Callable[[Scenario, Episode, np.random.Generator], Episode]] = {
    "drift": _drift,
    "new-model": _new_model,
    "outage": _outage,
    "price-change": _price_change,
    "traffic-shift": _traffic_shift,
    "delayed-feedback": _delayed,
    "noisy-feedback": _noisy,
}

_DEFAULTS: dict[str, Callable[[Environment], dict[str, Any]]] = {
    "drift": lambda env: {"model": _best_model(env), "delta": -0.5, "at": 0.5},
    "new-model": lambda env: {"model": sorted(env.dormant)[0] if env.dormant else _best_model(env), "at": 0.3},
    "outage": lambda env: {"model": _best_model(env), "at": 0.4, "until": 0.6, "cost_factor": 0.0, "latency_s": 30.0},
    "price-change": lambda env: {
        "model": env.model_names[int(np.argmax(_mean_cost(env)))],
        "factor": 0.2,
        "at": 0.5,
        "announce": "true",
    },
    "traffic-shift": lambda env: {
        "to": env.domain_names[
            int(np.argmin(np.bincount(env.domains[env.eval_rows], minlength=len(env.domain_names))))
        ],
        "share": 0.8,
        "at": 0.5,
    },
    "delayed-feedback": lambda env: {"mean": 200.0, "dist": "exponential", "lost": 0.1},
    "noisy-feedback": lambda env: {"sd": 0.1, "flip": 0.1},
}
SCENARIOS: tuple[str, ...] = tuple(_APPLY)
_NUMBERS = {"delta", "at", "until", "cost_factor", "latency_s", "factor", "share", "mean", "lost", "sd", "flip"}
_RANGES = {"share": (0.0, 1.0), "factor": (0.0, math.inf), "cost_factor": (0.0, math.inf), "latency_s": (0.0, math.inf)}
"""Settings that only make sense in a range (a traffic share of 1.5 was numpy's ValueError mid-run)."""
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def make_scenario(text: str, env: Environment) -> Scenario:
    """Parse `name[:k=v,…]` and resolve its settings: command line > the world's `[scenarios.<name>]` > defaults."""
    spec: Spec = parse_spec(text, positional="model")
    if spec.name not in _APPLY:
        raise InvalidInput(f"unknown scenario {quoted([spec.name], SCENARIOS)}; known: {', '.join(SCENARIOS)}")
    defaults = _DEFAULTS[spec.name](env)
    spec.check(set(defaults))
    settings: dict[str, Any] = {**defaults, **env.scenario_defaults.get(spec.name, {}), **spec.settings}
    for key in _NUMBERS & set(settings):
        settings[key] = spec.float(key, float(settings[key])) if key in spec.settings else float(settings[key])
        low, high = _RANGES.get(key, (-math.inf, math.inf))
        if not low <= settings[key] <= high:
            span = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            raise InvalidInput(f"{spec.name}: {key} must be {span}, got {settings[key]:g}")
    if "announce" in settings and str(settings["announce"]).lower() not in _TRUE | _FALSE:
        raise InvalidInput(f"{spec.name}: announce must be true or false, got {settings['announce']!r}")
    if "model" in settings and settings["model"] not in env.model_names:
        raise InvalidInput(f"{spec.name}: unknown model {settings['model']!r}; models: {list(env.model_names)}")
    if "to" in settings and settings["to"] not in env.domain_names:
        raise InvalidInput(f"traffic-shift: unknown domain {settings['to']!r}; domains: {list(env.domain_names)}")
    Feedback(
        delay_mean=settings.get("mean", 0.0),
        delay_dist=settings.get("dist", "exponential"),
        lost=settings.get("lost", 0.0),
        noise_sd=settings.get("sd", 0.0),
        flip=settings.get("flip", 0.0),
    )  # validates the feedback settings early
    return Scenario(name=spec.name, settings=settings)


def build_episode(
    env: Environment, scenarios: Sequence[Scenario], seed: int, *, steps: int | None = None, passes: int = 1
) -> Episode:
    """The episode of run `seed` with every scenario applied, in order."""
    n = env.n_steps(steps, passes)
    schedules = [s for s in (sc.schedule(env, n) for sc in scenarios) if s is not None]
    if len(schedules) > 1:
        raise InvalidInput("only one traffic-shift per run")
    episode = env.episode(seed, steps=n, schedule=schedules[0] if schedules else None)
    for i, scenario in enumerate(scenarios):
        episode = scenario.apply(episode, np.random.default_rng([seed, SCENARIO_SALT, i]))
    return episode
