"""The field's strategies that need ground truth or an offline fit, measured exactly like the bandit policies.

- `oracle`: per prompt, the available model with the highest reward q − λ·c (ties → cheaper). An upper bound.
  In a stochastic world it knows each model's success probability for the prompt, not the coin flip.
- `cascade[:threshold=0.5,error=0.1,noise=0,max_cost=inf,models=a>b>c]` (RouterBench §5.3,
  `routers/run_cascading_router.py`): call the models from the cheapest (mean cost) up; a judge scores each
  answer as its true quality plus N(0, noise²), accepts it when the score ≥ threshold, and is wrong — flips
  its verdict — with probability `error`. Stop at the first accepted answer, at the last model, or before a
  call that would exceed `max_cost` (USD per request) once something was spent. Every call is paid; the last
  answer is returned. For 0/1 qualities any threshold in (0, 1] is RouterBench's rule (the 95% quantile of
  scores, i.e. 1).
- `llm-router[:accuracy=0.8,price_in=0.15,price_out=0.6,out_tokens=20,latency_s=0.5]`: an LLM reads the
  prompt and names the best model (the oracle's choice at the request's λ) with probability `accuracy`, else
  a uniformly random other available model. Its own call costs input tokens × price_in + out_tokens ×
  price_out (USD per 1M tokens; default gpt-4o-mini's list prices) and adds `latency_s`.
- `classifier[:dim=256,ridge=1,folds=5]`: the classifier-based (predictive) router, `bandit_router`'s
  `SupervisedPolicy` — a ridge regression of each model's quality on the prompt's features, routing by
  argmax q̂ − λ·ĉ — fitted on the environment's **training part only**. Without a training part it is
  **cross-fitted**: the evaluated prompts are split into `folds` (seeded by the run), and each prompt is
  routed by the fit on the other folds, so no prompt is routed by a model trained on its own outcome.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from bandit_router.errors import InvalidInput

from ..environments.base import Environment, Episode
from ..metrics import column_means, oracle_choice, take
from ..specs import parse_spec
from .base import STRATEGY_SALT, Agent, Trace, trace_of


class OracleAgent:
    """The per-prompt oracle at the run's λ."""

    spec = "oracle"

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        started = time.process_time()
        chosen = oracle_choice(episode.truth, episode.cost_usd, episode.available, cost_weight)
        return trace_of(episode, chosen, time.process_time() - started)


def mean_costs(env: Environment) -> np.ndarray:
    """Each model's mean cost over the training part (or the evaluated part when there is none)."""
    rows = env.train_rows if len(env.train_rows) else env.eval_rows
    return column_means(env.cost_usd[rows], empty=np.inf)


class CascadeAgent:
    """Cheapest model first; escalate while the (imperfect) judge rejects the answer."""

    def __init__(
        self,
        spec: str,
        chain: Sequence[int],
        *,
        threshold: float = 0.5,
        error: float = 0.1,
        noise: float = 0.0,
        max_cost: float = math.inf,
    ) -> None:
        if not 0 <= error <= 1 or noise < 0 or max_cost <= 0:
            raise InvalidInput(f"{spec}: error must be in [0, 1], noise >= 0, max_cost > 0")
        self.spec, self.chain = spec, list(chain)
        self.threshold, self.error, self.noise, self.max_cost = threshold, error, noise, max_cost

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        started = time.process_time()
        rng = np.random.default_rng([seed, STRATEGY_SALT, 1])
        n = episode.n_steps
        chosen = np.full(n, -1, dtype=np.int64)
        paid, latency, calls = np.zeros(n), np.zeros(n), np.zeros(n)
        lat = episode.latency_s
        for t in range(n):
            budget, spent = self.max_cost, 0.0
            for k in self.chain:
                if not episode.available[t, k]:
                    continue
                c = float(episode.cost_usd[t, k])
                if spent > 0 and c >= budget:
                    break
                spent, budget = spent + c, budget - c
                calls[t] += 1
                latency[t] += 0.0 if lat is None else float(lat[t, k])
                chosen[t] = k
                accepted = float(episode.quality[t, k]) + self.noise * rng.standard_normal() >= self.threshold
                if rng.random() < self.error:
                    accepted = not accepted
                if accepted:
                    break
            paid[t] = spent
        served = chosen >= 0
        return Trace(
            chosen=chosen,
            quality=take(episode.quality, chosen),
            cost_usd=np.where(served, paid, np.nan),
            latency_s=None if lat is None else np.where(served, latency, np.nan),
            seconds=time.process_time() - started,
            extra={"calls_per_request": float(calls[served].mean()) if served.any() else 0.0},
        )


class LLMRouterAgent:
    """An LLM as the router: right with probability `accuracy`, and its own call is paid for."""

    def __init__(
        self,
        spec: str,
        input_tokens: np.ndarray,
        *,
        accuracy: float = 0.8,
        price_in: float = 0.15,
        price_out: float = 0.6,
        out_tokens: float = 20.0,
        latency_s: float = 0.5,
    ) -> None:
        if not 0 <= accuracy <= 1 or min(price_in, price_out, out_tokens, latency_s) < 0:
            raise InvalidInput(f"{spec}: accuracy must be in [0, 1] and prices, tokens, latency >= 0")
        self.spec, self.input_tokens, self.accuracy = spec, input_tokens, accuracy
        self.price_in, self.price_out, self.out_tokens, self.latency = price_in, price_out, out_tokens, latency_s

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        started = time.process_time()
        rng = np.random.default_rng([seed, STRATEGY_SALT, 2])
        best = oracle_choice(episode.truth, episode.cost_usd, episode.available, cost_weight)
        chosen = best.copy()
        wrong = (rng.random(episode.n_steps) >= self.accuracy) & (best >= 0)
        for t in np.flatnonzero(wrong).tolist():
            others = [k for k in np.flatnonzero(episode.available[t]).tolist() if k != best[t]]
            if others:
                chosen[t] = others[int(rng.integers(len(others)))]
        trace = trace_of(episode, chosen, 0.0)
        own = (self.input_tokens[episode.rows] * self.price_in + self.out_tokens * self.price_out) / 1e6
        trace.cost_usd = trace.cost_usd + own
        if trace.latency_s is not None:
            trace.latency_s = trace.latency_s + self.latency
        trace.extra = {"router_cost_usd": float(own.mean())}
        trace.seconds = time.process_time() - started
        return trace


def make_strategy(text: str, env: Environment) -> Agent:
    """`oracle`, `cascade[:…]` or `llm-router[:…]` for `env`."""
    spec = parse_spec(text)
    if spec.name == "oracle":
        spec.check(set())
        return OracleAgent()
    if spec.name == "cascade":
        spec.check({"threshold", "error", "noise", "max_cost", "models"})
        if spec.get("models"):
            names = [m.strip() for m in str(spec.get("models")).split(">") if m.strip()]
            unknown = set(names) - set(env.model_names)
            if unknown:
                raise InvalidInput(f"{text}: unknown models {sorted(unknown)}")
            chain = [env.model_names.index(m) for m in names]
        else:
            chain = np.argsort(mean_costs(env), kind="stable").tolist()
        return CascadeAgent(
            spec.text,
            chain,
            threshold=spec.float("threshold", 0.5),
            error=spec.float("error", 0.1),
            noise=spec.float("noise", 0.0),
            max_cost=float(spec.get("max_cost", "inf") or "inf"),
        )
    if spec.name == "llm-router":
        spec.check({"accuracy", "price_in", "price_out", "out_tokens", "latency_s"})
        from bandit_router.features import estimate_tokens

        tokens = np.array([estimate_tokens(p) for p in env.prompts], dtype=np.float64)
        return LLMRouterAgent(
            spec.text,
            tokens,
            accuracy=spec.float("accuracy", 0.8),
            price_in=spec.float("price_in", 0.15),
            price_out=spec.float("price_out", 0.6),
            out_tokens=spec.float("out_tokens", 20.0),
            latency_s=spec.float("latency_s", 0.5),
        )
    raise InvalidInput(f"unknown strategy {spec.name!r}")
