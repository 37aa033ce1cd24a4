"""Agents: what runs through an episode and answers each prompt. Every agent returns a `Trace` (per step: the
model whose answer was returned, its true quality, everything paid), so every strategy is measured alike.

- `RouterAgent` drives a real `bandit_router.Router` — the object the service uses — with any registered
  policy: it featurizes the prompt, calls `decide`, and reveals **only the chosen model's outcome** through
  `learn` (at once, or later and maybe never under `delayed-feedback`; noisy under `noisy-feedback`).
- Simulator-side strategies that need the ground truth (oracle, cascade, LLM-as-router) live in
  `strategies.py`; the classifier-based router and the MABWiser peers are policies driven by a `RouterAgent`.

`make_agent(spec, env)` resolves a spec: `oracle`, `cascade[:…]`, `llm-router[:…]`, `classifier[:…]`,
`mabwiser-linucb[:…]`, `mabwiser-lints[:…]`, or any name of the policy registry (`vw-squarecb`, `linucb`,
`fixed:<model>`, `random`, `rules`, …).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor
from bandit_router.outcomes import OutcomeTable
from bandit_router.policies import REGISTRY, Policy, make_policy, warm_start
from bandit_router.reward import RewardConfig
from bandit_router.router import Pacer, Router
from bandit_router.state import pack, unpack
from bandit_router.types import Context, Decision, Outcome

from .environments.base import Environment, Episode, Event
from .metrics import take

ROUTER_SALT = 404
FEEDBACK_SALT = 505
WARMUP_SALT = 606

WARMUPS = ("none", "bandit", "full")

PacerFactory = Callable[[Sequence[ModelSpec], float], Pacer]
"""Builds a budget pacer for one run from its initial models and λ (see `bandit_router.router.Pacer`)."""


def derived_seed(seed: int, salt: int) -> int:
    """An independent seed for one purpose (stream, router, feedback) of run `seed`."""
    return int(np.random.SeedSequence([seed, salt]).generate_state(1)[0])


@dataclass
class Trace:
    """What one run did. Arrays have one entry per step; `chosen` is −1 where no model was available.

    `cost_usd` is everything paid for the request (all calls of a cascade, an LLM router's own call).
    `seconds` is the CPU time of the agent's loop (steps per CPU-second compare policies fairly on a busy machine).
    `extra` holds numbers a run adds to its summary record (a pacer's, a cascade's calls per request, …).
    """

    chosen: np.ndarray
    quality: np.ndarray
    cost_usd: np.ndarray
    latency_s: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Agent(Protocol):
    spec: str

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace: ...


def trace_of(episode: Episode, chosen: np.ndarray, seconds: float, extra: dict[str, float] | None = None) -> Trace:
    """The trace of an agent that returned the answer of `chosen[t]` and paid only for that call."""
    return Trace(
        chosen=chosen,
        quality=take(episode.quality, chosen),
        cost_usd=take(episode.cost_usd, chosen),
        latency_s=None if episode.latency_s is None else take(episode.latency_s, chosen),
        seconds=seconds,
        extra=extra or {},
    )


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
        specs = [m for m in episode.models if m.name in episode.initial_models]
        return Router(
            specs,
            self.policy_factory(seed),
            reward_config=RewardConfig(cost_weight=cost_weight),
            seed=derived_seed(seed, ROUTER_SALT),
            pacer=self.pacer_factory(specs, cost_weight) if self.pacer_factory else None,
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
        for row in rng.permutation(env.train_rows).tolist():
            allowed = [names[k] for k in np.flatnonzero(available[row]) if names[k] not in env.dormant]
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
        names = episode.model_names
        column = {name: k for k, name in enumerate(names)}
        bits = [1 << k for k in range(len(names))]
        known = sum(b for b, name in zip(bits, names, strict=True) if name in episode.initial_models)
        events = sorted(episode.events, key=lambda e: e.step)
        n = episode.n_steps
        rows = episode.rows.tolist()
        codes = (episode.available.astype(np.int64) @ np.array(bits, dtype=np.int64)).tolist()
        quality, cost = episode.quality.tolist(), episode.cost_usd.tolist()
        tokens = (
            episode.output_tokens.tolist() if env.kind == "synthetic" and episode.output_tokens is not None else None
        )
        latency = episode.latency_s.tolist() if episode.latency_s is not None else None
        observe = _observer(episode, seed)
        delays = _delays(episode, seed)
        pending: list[tuple[int, int, Decision, Outcome]] = []
        allowed_for: dict[int, list[str] | None] = {}
        chosen = [-1] * n
        next_event = 0
        # with a pacer, its λ is used (the run's λ is its starting point) and its clock is the simulated step
        lam: float | None = None if router.pacer is not None else cost_weight
        tick = getattr(router.pacer, "tick", None)
        started = time.process_time()
        for t in range(n):
            while next_event < len(events) and events[next_event].step <= t:
                _apply_event(router, events[next_event])
                known |= bits[column[events[next_event].spec.name]]
                allowed_for.clear()
                next_event += 1
            while pending and pending[0][0] <= t:
                _, _, old, outcome = heapq.heappop(pending)
                router.learn(old, outcome)
            code = codes[t] & known
            allowed = allowed_for.get(code, ())
            if allowed == ():
                allowed = allowed_for[code] = (
                    None if code == known else [name for b, name in zip(bits, names, strict=True) if code & b]
                )
            if allowed is not None and not allowed:
                continue
            row = rows[t]
            if self.on_row is not None:
                self.on_row(row)
            if tick is not None:
                tick(t)
            decision = router.decide(self._context(env, row), models=allowed, cost_weight=lam)
            k = column[decision.model]
            chosen[t] = k
            outcome = Outcome(
                quality=observe(t, quality[t][k]),
                cost_usd=cost[t][k],
                output_tokens=None if tokens is None else int(tokens[t][k]),
                latency_s=None if latency is None else latency[t][k],
            )
            if delays is None or delays[t] == 0:
                router.learn(decision, outcome)
            elif delays[t] > 0:
                heapq.heappush(pending, (t + delays[t], t, decision, outcome))
        seconds = time.process_time() - started
        extra: dict[str, float] = {}
        summary = getattr(router.pacer, "summary", None)
        if callable(summary):
            extra.update(summary())
        return trace_of(episode, np.array(chosen, dtype=np.int64), seconds, extra)


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


SIMULATOR_STRATEGIES = ("oracle", "cascade", "llm-router", "classifier", "mabwiser-linucb", "mabwiser-lints")


def known_names() -> set[str]:
    return set(REGISTRY) | set(SIMULATOR_STRATEGIES)


def make_agent(
    spec: str,
    env: Environment,
    *,
    warmup: str = "none",
    pacer_factory: PacerFactory | None = None,
    extractor: FeatureExtractor | None = None,
    cache_features: bool = True,
) -> Agent:
    """The agent for a policy or strategy spec (see the module docstring)."""
    from . import strategies

    name = spec.partition(":")[0]
    extractor = extractor or FeatureExtractor()
    options: dict[str, Any] = {
        "warmup": warmup,
        "pacer_factory": pacer_factory,
        "extractor": extractor,
        "cache_features": cache_features,
    }
    if name in ("oracle", "cascade", "llm-router"):
        return strategies.make_strategy(spec, env)
    if name == "classifier":
        return strategies.classifier_agent(spec, env, extractor=extractor, pacer_factory=pacer_factory)
    if name in ("mabwiser-linucb", "mabwiser-lints"):
        from .peers import mabwiser_factory

        return RouterAgent(spec, mabwiser_factory(spec), **options)
    if name not in REGISTRY:
        raise InvalidInput(f"unknown policy {name!r}; known: {', '.join(sorted(known_names()))}")
    make_policy(spec)  # fail early on a bad spec
    if name == "fixed" and spec.partition(":")[2] not in env.model_names:
        raise InvalidInput(f"{spec}: unknown model; this environment has {list(env.model_names)}")
    return RouterAgent(spec, lambda seed: make_policy(spec), **options)
