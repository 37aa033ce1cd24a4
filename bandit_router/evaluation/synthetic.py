"""Synthetic logs whose every policy value is known exactly, to test estimators and replay against the truth.

Both generators draw contexts from a finite pool with known probabilities, so the value of any policy that
does not change (a fixed pmf per pool context) is an exact finite sum, not a simulation:

    V(π) = Σ_j P(j) Σ_a π(a | j) E[r | j, a]

- `SyntheticBandit`: arrays only (the estimators' level). Context j has one-hot features; rewards are
  Bernoulli(E[r | j, a]); the logger is a softmax over random scores with a uniform floor.
- `SyntheticWorld`: a routing world (the replay level): a pool of prompts featurized by the real
  `FeatureExtractor`, a few catalog models, quality per (task, model), cost = tokens × list price, and
  `simulate_log` runs a real `Router` with any registered policy as the logger, with optional feedback delay.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import exploration
from ..catalog import ModelSpec
from ..features import FeatureExtractor
from ..router import Router
from ..types import Context, Outcome, Request
from .log import LoggedRecord

# -- arrays -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BanditLog:
    """n logged rounds: `context_index` (n,), `features` (n, d), `actions` (n,), `rewards` (n,),
    `logged_probability` (n,), `logged_pmf` (n, K)."""

    context_index: np.ndarray
    features: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    logged_probability: np.ndarray
    logged_pmf: np.ndarray

    def target(self, pool_pmf: np.ndarray) -> np.ndarray:
        """A pool policy (M, K) evaluated on the logged contexts: shape (n, K)."""
        return np.asarray(np.asarray(pool_pmf)[self.context_index])


@dataclass(frozen=True, eq=False)
class SyntheticBandit:
    """A contextual bandit over a pool of M contexts and K actions with exactly known policy values.

    `probability` (M,): P(context j); `features` (M, d); `expected_reward` (M, K) in (0, 1); `logging_pmf`
    (M, K): the logger's pmf on each context.
    """

    probability: np.ndarray
    features: np.ndarray
    expected_reward: np.ndarray
    logging_pmf: np.ndarray

    @property
    def n_actions(self) -> int:
        return int(self.expected_reward.shape[1])

    def value(self, pool_pmf: np.ndarray, expected: np.ndarray | None = None) -> float:
        """V(π) = Σ_j P(j) Σ_a π(a|j) E[r|j, a] for a pool policy `pool_pmf` (M, K); `expected` (M, K) in place of
        `expected_reward` for a transformed reward (its expectation: an affine map of r)."""
        reward = self.expected_reward if expected is None else expected
        return float(self.probability @ (np.asarray(pool_pmf) * reward).sum(axis=1))

    def clipped_value(self, pool_pmf: np.ndarray, max_weight: float, expected: np.ndarray | None = None) -> float:
        """V_M = E[min(w, M) r] = Σ_j P(j) Σ_a μ(a|j) min(π(a|j)/μ(a|j), M) E[r|j, a], exactly (what clipped IPS
        estimates; μ = `logging_pmf`), with `expected` as in `value`."""
        reward = self.expected_reward if expected is None else expected
        weight = np.minimum(np.asarray(pool_pmf) / self.logging_pmf, max_weight)
        return float(self.probability @ (self.logging_pmf * weight * reward).sum(axis=1))

    def epsilon_greedy(self, epsilon: float) -> np.ndarray:
        """The policy that picks the truly best action with probability 1 − ε (+ ε/K), shape (M, K)."""
        return np.stack([exploration.epsilon_greedy(row, epsilon) for row in self.expected_reward])

    def softmax(self, scores: np.ndarray, temperature: float) -> np.ndarray:
        """softmax(scores / τ) per context, `scores` (M, K) → pmf (M, K)."""
        return np.stack([exploration.softmax(row, temperature) for row in np.asarray(scores)])

    def sample(self, n: int, seed: int) -> BanditLog:
        """n rounds: context j ~ P, action a ~ logging_pmf[j], reward ~ Bernoulli(E[r|j, a])."""
        rng = np.random.default_rng(seed)
        j = rng.choice(len(self.probability), size=n, p=self.probability)
        cdf = np.cumsum(self.logging_pmf[j], axis=1)
        actions = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), self.n_actions - 1)
        rewards = (rng.random(n) < self.expected_reward[j, actions]).astype(np.float64)
        pmf = self.logging_pmf[j]
        return BanditLog(j, self.features[j], actions, rewards, pmf[np.arange(n), actions], pmf)


def make_synthetic_bandit(
    *, n_contexts: int = 20, n_actions: int = 4, uniform_share: float = 0.2, temperature: float = 0.2, seed: int = 0
) -> SyntheticBandit:
    """A random `SyntheticBandit`: contexts equally likely, one-hot features, E[r|j, a] ~ U(0.1, 0.9), and a
    logger μ = (1 − u)·softmax(s / τ) + u/K over random scores s (so every μ(a|j) ≥ u/K)."""
    rng = np.random.default_rng(seed)
    expected = rng.uniform(0.1, 0.9, size=(n_contexts, n_actions))
    scores = rng.normal(size=(n_contexts, n_actions))
    soft = np.stack([exploration.softmax(row, temperature) for row in scores])
    logging = (1.0 - uniform_share) * soft + uniform_share / n_actions
    return SyntheticBandit(
        probability=np.full(n_contexts, 1.0 / n_contexts),
        features=np.eye(n_contexts),
        expected_reward=expected,
        logging_pmf=logging,
    )


# -- a routing world --------------------------------------------------------------------------------------

WORLD_MODELS = (
    ModelSpec("gpt-4.1-nano", 0.10, 0.40, {"family": "openai", "tier": "small"}, output_tokens=300),
    ModelSpec("gpt-4o-mini", 0.15, 0.60, {"family": "openai", "tier": "small"}, output_tokens=300),
    ModelSpec("gemini-2.5-flash", 0.30, 2.50, {"family": "gemini", "tier": "medium"}, output_tokens=300),
    ModelSpec("claude-haiku-4-5", 1.00, 5.00, {"family": "anthropic", "tier": "medium"}, output_tokens=300),
)
"""Four models with the default catalog's list prices and a fixed 300 output tokens each."""

_TASK_WORDS = {
    "code": ["def", "function", "python", "bug", "compile", "class", "loop", "sort"],
    "math": ["solve", "integral", "equation", "prove", "probability", "sum", "derivative", "theorem"],
    "chat": ["hello", "advice", "friend", "weekend", "feel", "recommend", "movie", "dinner"],
    "writing": ["poem", "story", "essay", "letter", "describe", "ocean", "novel", "summer"],
}


@dataclass(frozen=True, eq=False)
class PolicyValue:
    """A policy's exact expected reward, quality and cost per request."""

    reward: float
    quality: float
    cost_usd: float


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """A pool of M prompts (equally likely) and K models with known expected quality (M, K) and cost (M, K).

    Quality feedback is Bernoulli(quality[j, k]); cost is exact (input tokens × price + 300 output tokens).
    """

    models: tuple[ModelSpec, ...]
    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    contexts: tuple[Context, ...]
    quality: np.ndarray
    cost_usd: np.ndarray

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def value(self, pool_pmf: np.ndarray, cost_weight: float) -> PolicyValue:
        """Exact value of a pool policy `pool_pmf` (M, K) at λ = `cost_weight`."""
        pmf = np.asarray(pool_pmf)
        q = float((pmf * self.quality).sum(axis=1).mean())
        c = float((pmf * self.cost_usd).sum(axis=1).mean())
        return PolicyValue(q - cost_weight * c, q, c)

    def router_pmf(self, router: Router, cost_weight: float) -> np.ndarray:
        """A router's pmf (M, K) on every pool prompt, without learning (it only advances the sampler)."""
        names = self.model_names
        rows = []
        for context in self.contexts:
            d = router.decide(context, models=names, cost_weight=cost_weight, decision_id="truth")
            rows.append(d.pmf)
        return np.array(rows)

    def outcome(self, j: int, k: int, rng: np.random.Generator) -> Outcome:
        spec = self.models[k]
        return Outcome(
            quality=float(rng.random() < self.quality[j, k]),
            cost_usd=float(self.cost_usd[j, k]),
            input_tokens=self.contexts[j].input_tokens,
            output_tokens=int(spec.output_tokens or 0),
        )


def make_world(
    *, seed: int = 0, prompts_per_task: int = 6, models: Sequence[ModelSpec] = WORLD_MODELS
) -> SyntheticWorld:
    """A random world: per task, each model's base quality ~ U(0.2, 0.9), per prompt ± U(−0.05, 0.05)."""
    rng = np.random.default_rng(seed)
    extractor = FeatureExtractor()
    tasks, prompts, contexts, rows = [], [], [], []
    base = {task: rng.uniform(0.2, 0.9, size=len(models)) for task in _TASK_WORDS}
    for task, words in _TASK_WORDS.items():
        for _ in range(prompts_per_task):
            text = " ".join(rng.choice(words, size=int(rng.integers(4, 12))))
            tasks.append(task)
            prompts.append(text)
            contexts.append(extractor(Request(prompt=text, context={"task": task})))
            rows.append(np.clip(base[task] + rng.uniform(-0.05, 0.05, size=len(models)), 0.01, 0.99))
    cost = np.array(
        [[m.cost_usd(c.input_tokens, m.output_tokens or 0.0) for m in models] for c in contexts], dtype=np.float64
    )
    return SyntheticWorld(tuple(models), tuple(prompts), tuple(tasks), tuple(contexts), np.array(rows), cost)


@dataclass(frozen=True, eq=False)
class SimulatedLog:
    """The records a logger produced, and which pool prompt each one was (`context_index` (n,))."""

    records: tuple[LoggedRecord, ...]
    context_index: np.ndarray


def simulate_log(
    world: SyntheticWorld,
    policy: str,
    n: int,
    *,
    seed: int = 0,
    cost_weight: float = 100.0,
    delay: int = 0,
) -> SimulatedLog:
    """Run a `Router` with `policy` on n requests drawn uniformly from the pool; feedback of decision t becomes
    known at step t + `delay` and is learned then. Decision t has `created_at` = t, `feedback_at` = t + delay."""
    router = Router(world.models, policy=policy, seed=seed)
    rng = np.random.default_rng([seed, 7])
    names = world.model_names
    pending: list[tuple[int, int, LoggedRecord]] = []
    records: list[LoggedRecord] = []
    index = np.empty(n, dtype=np.intp)
    for t in range(n):
        while pending and pending[0][0] <= t:
            _, _, done = heapq.heappop(pending)
            assert done.outcome is not None
            router.learn(done.decision, done.outcome)
        j = int(rng.integers(len(world.contexts)))
        index[t] = j
        decision = router.decide(world.contexts[j], models=names, cost_weight=cost_weight, decision_id=f"d{t:07d}")
        decision = dataclasses.replace(decision, created_at=float(t))
        outcome = world.outcome(j, names.index(decision.model), rng)
        record = LoggedRecord(decision, outcome, cost_usd=outcome.cost_usd, feedback_at=float(t + delay))
        records.append(record)
        heapq.heappush(pending, (t + delay if delay > 0 else t + 1, t, record))
    return SimulatedLog(tuple(records), index)
