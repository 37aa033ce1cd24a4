"""Run a simulation plan: every (policy, λ, seed) as one task, in parallel worker processes.

    plan = Plan(env=EnvSpec.parse("dataset:../shared/data/routellm/routellm.csv.gz"),
                policies=("vw-squarecb", "linucb"), cost_weights=(10.0, 40.0), seeds=tuple(range(10)))
    result = simulate(plan, workers=2)        # then report.write_report(result, "runs/x")

A task builds its episode (the same stream for every policy of a seed: common random numbers), runs the
agent, and reduces the trace to a `RunResult`: means, shares, regret curves against the oracle and the best
fixed model, and the reaction times after the scenarios' events. The oracle and fixed baselines are computed
from the same episodes. Results do not depend on the number of workers.

Worker processes are forked when the platform allows it and inherit the environment with its featurized
prompts; otherwise each worker rebuilds it from the (picklable) plan. A `pacer_factory` in the plan is
handed to every router (budget targets); whatever its pacer's `summary()` returns joins the run's record.
"""

from __future__ import annotations

import multiprocessing as mp
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit_router.budgets import BudgetConfig, Latency
from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor
from bandit_router.hints import quoted
from bandit_router.reward import MAX_COST_WEIGHT

from . import metrics as M
from .agents import WARMUPS, Agent, PacerFactory, Trace, known_names, make_agent, trace_of
from .budgets import realized_values
from .environments import Environment, EnvSpec, Episode, Mark
from .scenarios import SCENARIOS, Scenario, build_episode, make_scenario

REACTION_SHARE = 0.8
"""Reaction to drift, a new model or a price change: steps until this share of traffic is on the new best."""
OUTAGE_SHARE = 0.05
"""Reaction to an outage: steps until less than this share of traffic goes to the failed model."""


@dataclass(frozen=True)
class Plan:
    """Everything a simulation needs; picklable, so worker processes can rebuild it."""

    env: EnvSpec
    policies: tuple[str, ...]
    cost_weights: tuple[float, ...] = (20.0,)
    seeds: tuple[int, ...] = (0,)
    scenarios: tuple[str, ...] = ()
    steps: int | None = None
    passes: int = 1
    warmup: str = "none"
    window: int = 200
    share_windows: int = 50
    curve_points: int = 200
    cache_features: bool = True
    pacer_factory: PacerFactory | None = None

    def __post_init__(self) -> None:
        self._check_types()
        if not self.policies or not self.cost_weights or not self.seeds:
            raise InvalidInput("a plan needs at least one policy, one cost weight and one seed")
        if any(seed < 0 for seed in self.seeds):  # numpy's generators take no negative seed
            raise InvalidInput(f"seeds must be >= 0, got {min(self.seeds)}")
        if self.window < 1:  # no reaction time can be measured over fewer than one step
            raise InvalidInput(f"window must be >= 1, got {self.window}")
        if self.passes < 1:  # Environment.n_steps read 0 or -1 passes as one
            raise InvalidInput(f"passes must be >= 1, got {self.passes}")
        if self.steps is not None and self.passes != 1:  # the steps won, and the passes were left out without a word
            raise InvalidInput(f"give the run's length as steps ({self.steps}) or as passes ({self.passes}), not both")
        if self.warmup not in WARMUPS:  # without a split it was "warmup 'bogus' needs a training part"
            raise InvalidInput(f"warmup must be one of {', '.join(WARMUPS)}, not {self.warmup!r}")
        known = known_names()
        for spec in self.policies:
            if spec.partition(":")[0] not in known:
                where = "" if ":" not in spec else f" in {spec!r}"
                raise InvalidInput(f"unknown policy {quoted([spec.partition(':')[0]], known)}{where}; known: "
                                   f"{', '.join(sorted(known))}")
        if len(set(self.policies)) != len(self.policies):
            raise InvalidInput("each policy may appear once")
        for name, values in (("cost weight", self.cost_weights), ("seed", self.seeds)):
            twice = sorted({v for v in values if list(values).count(v) > 1})
            if twice:  # its runs were pooled as more seeds: n_seeds tripled for `10,10,10`, the intervals narrowed
                listed = ", ".join(f"{v:g}" for v in twice)
                raise InvalidInput(f"each {name} may appear once, got {listed} more than once")
        if any(spec.partition(":")[0].strip() == "oracle" for spec in self.policies):
            # run twice, its runs and its baseline runs were pooled: two curves in one APGR, doubled seeds
            raise InvalidInput("the oracle is always reported (the `oracle` records): leave it out of the policies")

    def _check_types(self) -> None:
        """What each field holds, checked before any environment is built: a string for a tuple was read letter by
        letter ("unknown policy 'l'"), `cost_weights=20.0` was a `TypeError`, `env="synthetic:default"` an
        `AttributeError` from `simulate`, and a NaN or negative λ, a float seed or an unknown scenario were refused
        only by the first run, seconds later. Any iterable but a string is taken for a tuple (a list, `range(5)`, a
        numpy array), numpy's numbers as Python's."""
        if not isinstance(self.env, EnvSpec):
            raise InvalidInput(f"env must be an EnvSpec (EnvSpec.parse(\"synthetic:default\")), got "
                               f"{type(self.env).__name__}")
        for name, what in (("policies", "policy specs"), ("cost_weights", "numbers"), ("seeds", "integers"),
                           ("scenarios", "scenario specs")):
            value = getattr(self, name)  # any iterable but a string: `seeds=range(5)`, `np.linspace(0, 50, 6)`
            if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
                raise InvalidInput(f"{name} must be a tuple of {what}, got {type(value).__name__} {value!r:.60} "
                                   f"(one: ({value!r:.40},))")
            object.__setattr__(self, name, tuple(value))
        for name in ("policies", "scenarios"):
            for spec in getattr(self, name):
                if not isinstance(spec, str):
                    raise InvalidInput(f"{name} must be strings, got {type(spec).__name__} {spec!r:.60}")
        for lam in self.cost_weights:  # numpy's numbers too (`np.float32(20)` and `np.int64(20)` were refused)
            if isinstance(lam, bool | np.bool_) or not isinstance(lam, numbers.Real) or not 0 <= lam <= MAX_COST_WEIGHT:
                raise InvalidInput(f"cost_weights must be finite numbers in [0, 1e9], got {lam!r}")
        object.__setattr__(self, "cost_weights", tuple(lam if type(lam) in (int, float) else float(lam)
                                                       for lam in self.cost_weights))  # 20 stays 20 (labels)
        for seed in self.seeds:
            if isinstance(seed, bool | np.bool_) or not isinstance(seed, numbers.Integral):
                raise InvalidInput(f"seeds must be integers, got {type(seed).__name__} {seed!r}")
        object.__setattr__(self, "seeds", tuple(int(seed) for seed in self.seeds))
        for spec in self.scenarios:
            if spec.partition(":")[0] not in SCENARIOS:
                raise InvalidInput(f"unknown scenario {quoted([spec.partition(':')[0]], SCENARIOS)}; known: "
                                   f"{', '.join(SCENARIOS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise InvalidInput(f"steps must be an integer >= 1 (or None: the whole stream), got {self.steps!r}")
        if self.pacer_factory is not None and not callable(self.pacer_factory):  # a BudgetConfig: a TypeError
            raise InvalidInput(f"pacer_factory must be a callable f(models, cost_weight) -> pacer (simulator.budgets."
                               f"TargetPacers(texts) for budget targets), got {type(self.pacer_factory).__name__}")


@dataclass(frozen=True)
class Task:
    policy: str
    cost_weight: float
    seed: int


@dataclass
class RunResult:
    """One (policy, λ, seed) run reduced to numbers and short curves."""

    policy: str
    cost_weight: float
    seed: int
    n_steps: int
    mean_reward: float
    mean_quality: float
    mean_cost_usd: float
    mean_latency_s: float | None
    model_shares: dict[str, float]
    regret_oracle: float
    regret_best_fixed: float
    best_fixed: str
    regret_per_request: float
    """Regret against the best fixed model in hindsight, per request, over the whole stream."""
    regret_per_request_second_half: float
    """The same over the second half of the stream (after the learner has had half of it)."""
    break_even_step: int | None
    """The step after which the cumulative reward never falls below the best fixed model's; None: never."""
    steps_per_s: float
    curve_steps: np.ndarray
    regret_oracle_curve: np.ndarray
    regret_best_fixed_curve: np.ndarray
    share_edges: np.ndarray
    shares_over_time: np.ndarray
    reaction: dict[str, float | None] = field(default_factory=dict)
    short_periods: dict[str, int] = field(default_factory=dict)
    """The events of `reaction` whose period was shorter than the window (→ its length in steps): never measured."""
    extra: dict[str, float] = field(default_factory=dict)


class Workspace:
    """What a process builds once per plan: the environment (with featurized prompts), the scenarios,
    the episodes per seed and the agents."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.env: Environment = plan.env.build()
        if plan.warmup != "none" and len(self.env.train_rows) == 0:
            # it warmed up on nothing, yet ran without the cold-start floor a `full` warm-up lifts, and said `full`
            raise InvalidInput(f"warmup {plan.warmup!r} needs a training part: a dataset with a split (--split), "
                               f"which {plan.env} has not")
        config = getattr(plan.pacer_factory, "config", None)
        if self.env.latency_s is None and isinstance(config, BudgetConfig):
            latency = [str(t) for t in config.targets if isinstance(t, Latency)]
            if latency:  # it ran, held nothing and reported a realised value of null
                raise InvalidInput(f"{', '.join(latency)}: {plan.env} has no latencies, so a latency target "
                                   "never binds (a dataset table carries none; a synthetic world does)")
        self.scenarios: list[Scenario] = [make_scenario(s, self.env) for s in plan.scenarios]
        self.extractor = FeatureExtractor()
        self._episodes: dict[int, Episode] = {}
        self._agents: dict[str, Agent] = {}
        self.blended = [m.input_usd_per_mtok + 3 * m.output_usd_per_mtok for m in self.env.models]

    def prepare(self) -> None:
        """Featurize every prompt a run can see and build every seed's episode (before workers fork)."""
        rows = np.concatenate([self.env.eval_rows, self.env.train_rows])
        if self.plan.cache_features:
            self.env.contexts(rows, self.extractor)
        for seed in self.plan.seeds:
            self.episode(seed)

    def episode(self, seed: int) -> Episode:
        if seed not in self._episodes:
            self._episodes[seed] = build_episode(
                self.env, self.scenarios, seed, steps=self.plan.steps, passes=self.plan.passes
            )
        return self._episodes[seed]

    def agent(self, spec: str) -> Agent:
        if spec not in self._agents:
            self._agents[spec] = make_agent(
                spec,
                self.env,
                warmup=self.plan.warmup,
                pacer_factory=self.plan.pacer_factory,
                extractor=self.extractor,
                cache_features=self.plan.cache_features,
            )
        return self._agents[spec]

    def run(self, task: Task) -> RunResult:
        episode = self.episode(task.seed)
        trace = self.agent(task.policy).run(episode, self.env, task.cost_weight, task.seed)
        return summarize_run(task, episode, trace, self.plan, self.blended)


def reaction_times(episode: Episode, chosen: np.ndarray, cost_weight: float, window: int) -> dict[str, float | None]:
    """Steps from each scenario event until the traffic followed it (see REACTION_SHARE, OUTAGE_SHARE).

    drift / new-model / price-change: until ≥ 80% of the next `window` decisions go to the model with the best
    true mean reward after the event; outage: until ≤ 5% go to the failed model (before it recovers).
    `<kind>_final_share` is that share over the last 10% of the period after the event. A second event of a kind
    is `<kind> 2`, and so on.

    An event's period ends at the next change of the run (another event's step, an outage's end) or at the end of
    the run: past it the best model, or the failed one's state, is another event's, and a reaction measured
    through it was the later event's (a drift at 0.3 "reacted to" at the outage of 0.5).
    """
    out: dict[str, float | None] = {}
    r = np.where(episode.available, M.rewards(episode.truth, episode.cost_usd, cost_weight), np.nan)
    for label, mark, end in _event_periods(episode):
        if mark.kind in ("drift", "new-model", "price-change"):
            means = M.column_means(r[mark.step : end])
            target, above, threshold = int(np.argmax(means)), True, REACTION_SHARE
        else:  # an outage
            target, above, threshold = episode.index(mark.model), False, OUTAGE_SHARE
        hit = chosen == target
        steps = M.steps_until_share(hit, mark.step, window, threshold, above=above, end=end)
        out[label] = None if steps is None else float(steps)
        tail = hit[max(mark.step, end - max(1, (end - mark.step) // 10)) : end]
        out[f"{label}_final_share"] = float(tail.mean()) if tail.size else None
    return out


REACTION_KINDS = ("drift", "new-model", "price-change", "outage")
"""The events a reaction time is measured after."""


def _event_periods(episode: Episode) -> list[tuple[str, Mark, int]]:
    """(label, event, end of its period) of each event with a reaction time: `drift`, a second one `drift 2`, …; the
    period ends at the next change of the run (another event's step, an outage's end) or at the end of the run."""
    out = []
    seen: dict[str, int] = {}
    changes = sorted({m.step for m in episode.marks} | {m.end for m in episode.marks if m.end is not None})
    for mark in episode.marks:
        seen[mark.kind] = seen.get(mark.kind, 0) + 1
        label = mark.kind if seen[mark.kind] == 1 else f"{mark.kind} {seen[mark.kind]}"  # a second drift: `drift 2`
        end = next((step for step in changes if step > mark.step), episode.n_steps)
        if mark.kind in REACTION_KINDS:
            out.append((label, mark, end))
    return out


def short_periods(episode: Episode, window: int) -> dict[str, int]:
    """The events whose period is shorter than `window` steps, with its length: no window of decisions fits in it,
    so their reaction time is None whatever the policy did (`reaction_times`), not for want of a reaction."""
    return {label: end - mark.step for label, mark, end in _event_periods(episode) if end - mark.step < window}


def summarize_run(task: Task, episode: Episode, trace: Trace, plan: Plan, blended: list[float]) -> RunResult:
    """Reduce a trace with the episode's full truth (every model's outcome) to a `RunResult`."""
    lam = task.cost_weight
    served = episode.available.any(axis=1)
    reward = trace.quality - lam * trace.cost_usd
    R = M.rewards(episode.quality, episode.cost_usd, lam)
    oracle_reward = M.take(R, M.oracle_choice(episode.truth, episode.cost_usd, episode.available, lam))
    order = M.fallback_order(blended)
    fixed = np.stack([M.take(R, M.fixed_choice(episode.available, k, order)) for k in range(len(episode.models))])
    # a model that never answers (dormant, never brought in) "fixed" is the cheapest one's stream under its name
    totals = np.where(episode.available.any(axis=0), np.nansum(fixed, axis=1), -np.inf)
    best = int(np.argmax(totals))
    regret_oracle = M.cumulative_regret(oracle_reward, reward)
    regret_fixed = M.cumulative_regret(fixed[best], reward)
    n = episode.n_steps
    idx = np.unique(np.linspace(0, n - 1, min(plan.curve_points, n)).astype(int))
    edges, shares = M.model_shares(trace.chosen, len(episode.models), plan.share_windows)
    picked = trace.chosen[trace.chosen >= 0]
    counts = np.bincount(picked, minlength=len(episode.models)) / max(picked.size, 1)
    return RunResult(
        policy=task.policy,
        cost_weight=lam,
        seed=task.seed,
        n_steps=n,
        mean_reward=float(np.nanmean(reward[served])),
        mean_quality=float(np.nanmean(trace.quality[served])),
        mean_cost_usd=float(np.nanmean(trace.cost_usd[served])),
        mean_latency_s=None if trace.latency_s is None else float(np.nanmean(trace.latency_s[served])),
        model_shares={m: float(c) for m, c in zip(episode.model_names, counts, strict=True)},
        regret_oracle=float(regret_oracle[-1]),
        regret_best_fixed=float(regret_fixed[-1]),
        best_fixed=episode.model_names[best],
        regret_per_request=M.regret_per_step(regret_fixed),
        regret_per_request_second_half=M.regret_per_step(regret_fixed, start=n // 2),
        break_even_step=M.break_even_step(regret_fixed),
        steps_per_s=n / trace.seconds if trace.seconds > 0 else float("inf"),
        curve_steps=idx + 1,
        regret_oracle_curve=regret_oracle[idx],
        regret_best_fixed_curve=regret_fixed[idx],
        share_edges=edges,
        shares_over_time=shares,
        reaction=reaction_times(episode, trace.chosen, lam, plan.window),
        short_periods=short_periods(episode, plan.window),
        extra={**trace.extra, **_target_values(plan, episode, trace)},
    )


def _target_values(plan: Plan, episode: Episode, trace: Trace) -> dict[str, float]:
    """The realised value of every budget target of the plan (`--target`) on this run, for every record."""
    config = getattr(plan.pacer_factory, "config", None)
    if not isinstance(config, BudgetConfig):
        return {}
    step_s = float(getattr(plan.pacer_factory, "seconds_per_step", 1.0))
    return realized_values(config, episode.models, trace.chosen, trace.cost_usd, trace.latency_s, step_s)


@dataclass
class SimulationResult:
    """All runs of a plan, the oracle and fixed baselines, and what the environment was."""

    plan: Plan
    env: dict[str, Any]
    scenarios: list[dict[str, Any]]
    runs: list[RunResult]
    baselines: list[RunResult]
    n_steps: int
    model_names: tuple[str, ...]
    q_by_seed: dict[int, np.ndarray] = field(default_factory=dict)
    """Per seed, the per-step qualities (n_steps, K) of the episode, for the two-model oracle curve."""


_WORKSPACE: Workspace | None = None


def _init_worker(plan: Plan) -> None:
    global _WORKSPACE
    if _WORKSPACE is None or _WORKSPACE.plan != plan:
        _WORKSPACE = Workspace(plan)
        _WORKSPACE.prepare()


def _run_in_worker(task: Task) -> RunResult:
    assert _WORKSPACE is not None
    return _WORKSPACE.run(task)


def simulate(
    plan: Plan,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Run every (policy, λ, seed) of `plan`; `workers` processes (default: one per core)."""
    global _WORKSPACE
    if not isinstance(plan, Plan):  # "'dict' object has no attribute 'env'"
        raise InvalidInput(f"simulate takes a Plan (Plan(env=EnvSpec.parse(...), policies=(...))), got "
                           f"{type(plan).__name__}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInput(f"workers must be >= 1 (or left out: one per core), got {workers}")  # 1.5 was taken
    workspace = Workspace(plan)
    workspace.prepare()
    for spec in plan.policies:
        workspace.agent(spec)  # fail early on a bad spec, before any process starts
    tasks = [Task(p, lam, s) for p in plan.policies for lam in plan.cost_weights for s in plan.seeds]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    runs: list[RunResult] = []
    if workers == 1:
        for i, task in enumerate(tasks):
            runs.append(workspace.run(task))
            if progress:
                progress(i + 1, len(tasks))
    else:
        _WORKSPACE = workspace  # forked workers inherit it (featurized prompts, episodes)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        try:
            with ProcessPoolExecutor(
                workers, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(plan,)
            ) as pool:
                futures = [pool.submit(_run_in_worker, task) for task in tasks]
                for i, future in enumerate(as_completed(futures)):
                    runs.append(future.result())
                    if progress:
                        progress(i + 1, len(tasks))
        finally:
            _WORKSPACE = None
    order = {t: i for i, t in enumerate(tasks)}
    runs.sort(key=lambda r: order[Task(r.policy, r.cost_weight, r.seed)])
    baselines = baseline_runs(workspace)
    episode = workspace.episode(plan.seeds[0])
    return SimulationResult(
        plan=plan,
        env=workspace.env.describe(),
        scenarios=[s.describe() for s in workspace.scenarios],
        runs=runs,
        baselines=baselines,
        n_steps=episode.n_steps,
        model_names=episode.model_names,
        q_by_seed={s: workspace.episode(s).quality for s in plan.seeds},
    )


def baseline_runs(workspace: Workspace) -> list[RunResult]:
    """The oracle and every fixed model, for every λ and seed of the plan."""
    from .agents import OracleAgent

    out = []
    plan = workspace.plan
    order = M.fallback_order(workspace.blended)
    for lam in plan.cost_weights:
        for seed in plan.seeds:
            episode = workspace.episode(seed)
            trace = OracleAgent().run(episode, workspace.env, lam, seed)
            out.append(summarize_run(Task("oracle", lam, seed), episode, trace, plan, workspace.blended))
            for k, model in enumerate(episode.model_names):
                if not episode.available[:, k].any():
                    continue  # a dormant model that never arrives
                trace = trace_of(episode, M.fixed_choice(episode.available, k, order), 0.0)
                out.append(summarize_run(Task(f"fixed:{model}", lam, seed), episode, trace, plan, workspace.blended))
    return out
