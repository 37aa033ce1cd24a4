"""`RouterAgent`: drives a real `bandit_router.Router` — the object the service uses — with any registered
policy: it featurizes the prompt, calls `decide`, and reveals **only the chosen model's outcome** through
`learn` (at once, or later and maybe never under `delayed-feedback`; noisy under `noisy-feedback`).

A run is one `_Run`: its steps apply the episode's events, deliver the feedback that arrived, then decide.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor
from bandit_router.outcomes import OutcomeTable
from bandit_router.policies import Policy, check_models, warm_start
from bandit_router.reward import RewardConfig
from bandit_router.router import Router
from bandit_router.state import pack, unpack
from bandit_router.types import Context, Decision, Outcome

from ..environments.base import Environment, Episode, Event
from .base import FEEDBACK_SALT, ROUTER_SALT, WARMUP_SALT, PacerFactory, Trace, derived_seed, trace_of

WARMUPS = ("none", "bandit", "full")


@runtime_checkable
class SimulatedClock(Protocol):
    """A pacer on simulated time (`simulator.budgets.SimulatedPacer`): told the step before each decision."""

    def tick(self, step: int) -> None: ...


@runtime_checkable
class Summarized(Protocol):
    """A pacer that adds numbers to the run's summary record."""

    def summary(self) -> dict[str, float]: ...


class RouterAgent:
    """A `Router` with a fresh policy per run; the policy learns only from the chosen model's outcome.

    `warmup` (before the scored stream, using the environment's training part only):
    `none`; `bandit`: stream the training part once with bandit feedback, as a deployment would have logged it;
    `full`: pre-train with every (prompt, model) outcome of the training part — the information the
    classifier-based router gets — through `bandit_router.policies.warm_start`.
    `cache_features=False` featurizes every prompt anew (what the speed benchmark measures).
    `on_row` is called with the prompt's pool row before each decision (the cross-fitted classifier uses it).
    """

    def __init__(
        self,
        spec: str,
        policy_factory: Callable[[int], Policy],
        *,
        warmup: str = "none",
        pacer_factory: PacerFactory | None = None,
        extractor: FeatureExtractor | None = None,
        cache_features: bool = True,
        on_row: Callable[[int], None] | None = None,
    ) -> None:
        if warmup not in WARMUPS:
            raise InvalidInput(f"warmup must be one of {', '.join(WARMUPS)}, not {warmup!r}")
        self.spec = spec
        self.policy_factory = policy_factory
        self.warmup = warmup
        self.pacer_factory = pacer_factory
        self.extractor = extractor or FeatureExtractor()
        self.cache_features = cache_features
        self.on_row = on_row
        self._warm_states: dict[int, bytes] = {}

    def _context(self, env: Environment, row: int) -> Context:
        if self.cache_features:
            return env.context(row, self.extractor)
        attrs = env.attributes[row] if env.attributes is not None else None
        return self.extractor.extract(env.prompts[row], attributes=attrs)

    def make_router(self, episode: Episode, cost_weight: float, seed: int) -> Router:
        """The router starts with the episode's initial models and is told of the others as they join (a
        `new-model` scenario): its policy is checked against every model of the episode (a `fixed:<model>` or
        a rule may name one that joins later)."""
        specs = [m for m in episode.models if m.name in episode.initial_models]
        policy = self.policy_factory(seed)
        check_models(policy, episode.models)
        return Router(
            specs,
            policy,
            policy_checked=True,
            reward_config=RewardConfig(cost_weight=cost_weight),
            seed=derived_seed(seed, ROUTER_SALT),
            pacer=self.pacer_factory(episode.models, cost_weight) if self.pacer_factory else None,
            # a router pre-trained on every model's outcomes has seen them all: no cold-start floor
            cold_start_rounds=0 if self.warmup == "full" else 20,
        )

    def _warm_up(self, router: Router, env: Environment, cost_weight: float, seed: int) -> None:
        pacer, router.pacer = router.pacer, None  # the training part is not paced, nor counted by the pacer
        try:
            self._warm_up_unpaced(router, env, cost_weight, seed)
        finally:
            router.pacer = pacer

    def _warm_up_unpaced(self, router: Router, env: Environment, cost_weight: float, seed: int) -> None:
        rng = np.random.default_rng([seed, WARMUP_SALT])
        if self.warmup == "full":  # independent of λ: pre-train once per seed, then reload the state
            if seed in self._warm_states:
                router.policy.load(unpack(self._warm_states[seed]))
                return
            rows = rng.permutation(env.train_rows)
            log = OutcomeTable(
                prompt_ids=tuple(str(r) for r in rows),
                prompts=tuple(env.prompts[r] for r in rows),
                tasks=tuple(env.domain_names[env.domains[r]] for r in rows),
                models=env.model_names,
                quality=env.labels(rows, seed),
                cost_usd=env.cost_usd[rows],
            )
            specs = {m.name: m for m in router.models}
            warm_start(router.policy, [self._context(env, int(r)) for r in rows], specs, log)
            self._warm_states[seed] = pack(router.policy.state())  # a copy: learning mutates arrays in place
            return
        names = env.model_names
        available = env.available
        known = {m.name for m in router.models}  # not a dormant model, nor one a `new-model` scenario adds later
        for row in rng.permutation(env.train_rows).tolist():
            allowed = [names[k] for k in np.flatnonzero(available[row]) if names[k] in known]
            if not allowed:
                continue
            if self.on_row is not None:
                self.on_row(row)
            decision = router.decide(self._context(env, row), models=allowed, cost_weight=cost_weight)
            k = names.index(decision.model)
            q = float(env.quality[row, k])
            if env.stochastic:
                q = float(rng.random() < q)
            router.learn(decision, Outcome(quality=q, cost_usd=float(env.cost_usd[row, k])))

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        router = self.make_router(episode, cost_weight, seed)
        if self.warmup != "none" and len(env.train_rows):
            self._warm_up(router, env, cost_weight, seed)
        run = _Run(self, router, episode, env, cost_weight, seed)
        started = time.process_time()
        for t in range(episode.n_steps):
            run.apply_events(t)
            run.deliver_feedback(t)
            run.step(t)
        seconds = time.process_time() - started
        extra: dict[str, float] = dict(router.pacer.summary()) if isinstance(router.pacer, Summarized) else {}
        return trace_of(episode, np.array(run.chosen, dtype=np.int64), seconds, extra)


class _Run:
    """One run of a `RouterAgent` through an episode: the episode's arrays as lists (fast per-step access), the
    models known so far as a bit mask, and the feedback still on its way (a heap by arrival step)."""

    def __init__(
        self, agent: RouterAgent, router: Router, episode: Episode, env: Environment, cost_weight: float, seed: int
    ) -> None:
        self.agent, self.router, self.env = agent, router, env
        names = self.names = episode.model_names
        self.column = {name: k for k, name in enumerate(names)}
        self.bits = [1 << k for k in range(len(names))]
        self.known = sum(b for b, name in zip(self.bits, names, strict=True) if name in episode.initial_models)
        self.events = sorted(episode.events, key=lambda e: e.step)
        self.next_event = 0
        self.rows = episode.rows.tolist()
        self.codes = (episode.available.astype(np.int64) @ np.array(self.bits, dtype=np.int64)).tolist()
        self.quality, self.cost = episode.quality.tolist(), episode.cost_usd.tolist()
        self.tokens = (
            episode.output_tokens.tolist() if env.kind == "synthetic" and episode.output_tokens is not None else None
        )
        self.latency = episode.latency_s.tolist() if episode.latency_s is not None else None
        self.observe = _observer(episode, seed)
        self.delays = _delays(episode, seed)
        self.pending: list[tuple[int, int, Decision, Outcome]] = []
        self.allowed_for: dict[int, list[str] | None] = {}
        self.chosen = [-1] * episode.n_steps
        # with a pacer, its λ is used (the run's λ is its starting point) and its clock is the simulated step
        self.cost_weight: float | None = None if router.pacer is not None else cost_weight
        self.clock = router.pacer if isinstance(router.pacer, SimulatedClock) else None

    def apply_events(self, t: int) -> None:
        """The scenario's events due at step `t` (a model added, a price changed)."""
        while self.next_event < len(self.events) and self.events[self.next_event].step <= t:
            event = self.events[self.next_event]
            _apply_event(self.router, event)
            self.known |= self.bits[self.column[event.spec.name]]
            self.allowed_for.clear()
            self.next_event += 1

    def deliver_feedback(self, t: int) -> None:
        """Learn the delayed outcomes that arrive by step `t`."""
        while self.pending and self.pending[0][0] <= t:
            _, _, decision, outcome = heapq.heappop(self.pending)
            self.router.learn(decision, outcome)

    def allowed(self, t: int) -> list[str] | None:
        """The models available at step `t` (None: every known model; cached per availability pattern)."""
        code = self.codes[t] & self.known
        if code in self.allowed_for:
            return self.allowed_for[code]
        allowed = None if code == self.known else [n for b, n in zip(self.bits, self.names, strict=True) if code & b]
        self.allowed_for[code] = allowed
        return allowed

    def step(self, t: int) -> None:
        """Decide step `t`, then reveal the chosen model's outcome (now, later, or never)."""
        allowed = self.allowed(t)
        if allowed is not None and not allowed:
            return
        row = self.rows[t]
        if self.agent.on_row is not None:
            self.agent.on_row(row)
        if self.clock is not None:
            self.clock.tick(t)
        decision = self.router.decide(self.agent._context(self.env, row), models=allowed, cost_weight=self.cost_weight)
        k = self.column[decision.model]
        self.chosen[t] = k
        outcome = Outcome(
            quality=self.observe(t, self.quality[t][k]),
            cost_usd=self.cost[t][k],
            output_tokens=None if self.tokens is None else int(self.tokens[t][k]),
            latency_s=None if self.latency is None else self.latency[t][k],
        )
        delays = self.delays
        if delays is None or delays[t] == 0:
            self.router.learn(decision, outcome)
        elif delays[t] > 0:
            heapq.heappush(self.pending, (t + delays[t], t, decision, outcome))


def _apply_event(router: Router, event: Event) -> None:
    if event.kind == "add_model":
        router.add_model(event.spec)
    elif event.kind == "update_model":  # a catalog change: the router prices the model anew, keeps what it learned
        router.retire_model(event.spec.name)
        router.add_model(event.spec)
    else:
        raise InvalidInput(f"unknown event {event.kind!r}")


def _observer(episode: Episode, seed: int) -> Callable[[int, float], float]:
    """What the policy sees of a true quality: itself, or with the scenario's judge noise and flips."""
    fb = episode.feedback
    if not fb.noisy:
        return lambda t, q: q
    rng = np.random.default_rng([seed, FEEDBACK_SALT, 1])
    noise = rng.standard_normal(episode.n_steps) * fb.noise_sd
    flips = rng.random(episode.n_steps) < fb.flip

    def observe(t: int, q: float) -> float:
        value = 1.0 - q if flips[t] else q
        return min(1.0, max(0.0, value + float(noise[t])))

    return observe


def _delays(episode: Episode, seed: int) -> list[int] | None:
    """Per step, after how many steps its feedback arrives (−1: never); None when feedback is immediate."""
    fb = episode.feedback
    if not fb.delayed:
        return None
    rng = np.random.default_rng([seed, FEEDBACK_SALT, 2])
    n = episode.n_steps
    if fb.delay_dist == "fixed":
        delay = np.full(n, fb.delay_mean)
    elif fb.delay_dist == "uniform":
        delay = rng.uniform(0, 2 * fb.delay_mean, n)
    else:
        delay = rng.exponential(fb.delay_mean, n) if fb.delay_mean > 0 else np.zeros(n)
    out = np.rint(delay).astype(np.int64)
    out[rng.random(n) < fb.lost] = -1
    return out.tolist()
