"""Cascades and an LLM as the router in the simulator, driving the service's own code (`bandit_router.cascade`).

- `cascade[:threshold=0.5,judge=…,error=0.1,noise=0,judge_price=0,max_cost=inf,models=a>b>c]` (RouterBench
  §5.3): a `CascadeRun` with a `ThresholdEscalation`; models from the cheapest (mean cost) up, or `models`.
- `learned-cascade[:judge=…,v=0.05,floor=0.001,ridge=100,…]` (any field of `EscalationParams`): the same chain
  with `LearnedEscalation`, which learns online from the final answer's quality only (bandit feedback), as the
  service does; the next model is priced for the prompt as the service prices it (catalog prices × the prompt's
  tokens). With the plan's `warmup` it first streams the training part once: `bandit` learning from its own
  choices, `full` from every model's labelled outcome (both actions at every step: an offline warm start from
  labels, as the bandits' `full`; the scored part is always learned from the taken branch only).
- `llm-router[:accuracy=0.8,garble=0,price_in=0.15,price_out=0.6,out_tokens=20,latency_s=0.5]`: below.

**The simulated judge** answers like the live one: a rubric score from 1 to 10 as text, parsed by the service's
`parse_judge_score`. Its score is round(1 + 9·clip(q + noise·z, 0, 1)) with z ~ N(0, 1), q the answer's true
quality; with probability `error` it is reversed (11 − score: a judge that got it backwards). `judge=a` sets
the noise from an accuracy instead (and `error` defaults to 0 then): for 0/1 qualities the judge is on the
right side of 0.5 with probability a, i.e. noise = 0.5/Φ⁻¹(a). Each judged answer costs `judge_price` USD per
1M tokens × (the prompt's estimated tokens + 250 answer tokens) (default 0: free, as in RouterBench's
cascade). The last model's answer is never judged (as live). For 0/1 qualities with noise 0 any threshold in
(0, 1] is RouterBench's rule. The judge's random draws are fixed per (seed, prompt, model): every strategy run
on a seed gets the same score for the same answer (common random numbers), whatever it asked before.

**The simulated routing LLM** names the best model at the request's λ (the oracle's choice) with probability
`accuracy`, else a uniformly random other available model; with probability `garble` its reply names no
candidate. The reply is parsed by the service's `parse_choice`; an unparsed reply falls back to the policy's
choice, here the cheapest available model. Its own call costs input tokens × price_in + out_tokens × price_out
(USD per 1M tokens; default gpt-4o-mini's list prices) and adds `latency_s`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from bandit_router.cascade import (
    CascadeRun,
    ChainCall,
    Escalation,
    EscalationParams,
    LearnedEscalation,
    ModelAnswer,
    ThresholdEscalation,
    parse_choice,
    parse_judge_score,
)
from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor, estimate_tokens
from bandit_router.hints import quoted
from bandit_router.types import Context

from ..environments.base import Environment, Episode
from ..metrics import oracle_choice, take
from ..specs import Spec, parse_spec
from .base import JUDGE_SALT, STRATEGY_SALT, WARMUP_SALT, Trace, trace_of
from .strategies import mean_costs

JUDGE_ANSWER_TOKENS = 250.0


class SimulatedJudge:
    """A rubric judge whose score tracks the true quality with noise (see the module docstring)."""

    def __init__(self, *, noise: float = 0.0, error: float = 0.1, price: float = 0.0) -> None:
        if not 0 <= error <= 1 or noise < 0 or price < 0:
            raise InvalidInput("judge: error must be in [0, 1], noise >= 0, judge_price >= 0")
        self.noise, self.error, self.price = noise, error, price

    @staticmethod
    def noise_for(accuracy: float) -> float:
        """The noise at which the judge is on the right side of 0.5 for a 0/1 quality with probability `accuracy`."""
        if not 0.5 < accuracy <= 1.0:
            raise InvalidInput("judge accuracy must be in (0.5, 1]")
        return 0.0 if accuracy >= 1.0 else 0.5 / NormalDist().inv_cdf(accuracy)

    def reply(self, quality: float, rng: np.random.Generator) -> str:
        """The judge's reply text: a score from 1 to 10."""
        return self.reply_to(quality, float(rng.standard_normal()), float(rng.random()))

    def reply_to(self, quality: float, z: float, u: float) -> str:
        """The reply for the standard normal draw `z` and the uniform draw `u` (reversed when u < error)."""
        s = min(max(quality + self.noise * z, 0.0), 1.0)
        score = round(1 + 9 * s)
        return str(11 - score if u < self.error else score)

    @staticmethod
    def draws(n_rows: int, n_models: int, seed: int) -> np.ndarray:
        """One (z, u) per (row, model) of a table for a seed, shape (n_rows, n_models, 2): every strategy's judge
        scores the same answer alike (common random numbers), whatever the strategy asked before."""
        rng = np.random.default_rng([seed, JUDGE_SALT])
        return np.stack([rng.standard_normal((n_rows, n_models)), rng.random((n_rows, n_models))], axis=-1)

    def cost(self, prompt_tokens: float) -> float:
        return self.price * (prompt_tokens + JUDGE_ANSWER_TOKENS) / 1e6


class CascadeAgent:
    """Cheapest model first; after each answer but the last, the escalation rule accepts or escalates."""

    def __init__(
        self,
        spec: str,
        chain: Sequence[int],
        *,
        threshold: float = 0.5,
        error: float = 0.1,
        noise: float = 0.0,
        max_cost: float = math.inf,
        judge_price: float = 0.0,
        expected_cost: np.ndarray | None = None,
        prompt_tokens: np.ndarray | None = None,
        learned: EscalationParams | None = None,
        extractor: FeatureExtractor | None = None,
        warmup: str = "none",
    ) -> None:
        if max_cost <= 0:
            raise InvalidInput(f"{spec}: max_cost must be > 0")
        if not 0 <= threshold <= 1:
            raise InvalidInput(f"{spec}: threshold must be in [0, 1]")
        self.spec, self.chain = spec, list(chain)
        self.threshold, self.max_cost = threshold, max_cost
        self.judge = SimulatedJudge(noise=noise, error=error, price=judge_price)
        self.expected_cost = expected_cost
        self.prompt_tokens = prompt_tokens
        self.learned = learned
        self.extractor = extractor or FeatureExtractor()
        self.warmup = warmup

    def escalation(self) -> Escalation:
        """A fresh escalation rule for one run."""
        return LearnedEscalation(self.learned) if self.learned is not None else ThresholdEscalation(self.threshold)

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        started = time.process_time()
        escalation = self.escalation()
        draws = SimulatedJudge.draws(len(env.quality), len(env.model_names), seed)
        if self.learned is not None and self.warmup != "none" and len(env.train_rows):
            self._warm_up(escalation, env, cost_weight, seed, draws)
        rng = np.random.default_rng([seed, STRATEGY_SALT, 1])
        n = episode.n_steps
        chosen = np.full(n, -1, dtype=np.int64)
        paid, latency, calls, judged, escalations = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        lat = episode.latency_s
        for t in range(n):
            row = int(episode.rows[t])
            k, spent, lat_t, n_calls, n_judged, n_esc = self._chain(
                escalation, env, row, episode.quality[t], episode.cost_usd[t], episode.available[t],
                None if lat is None else lat[t], cost_weight, rng, draws[row],
            )  # fmt: skip
            chosen[t], paid[t], latency[t] = k, spent, lat_t
            calls[t], judged[t], escalations[t] = n_calls, n_judged, n_esc
        served = chosen >= 0
        extra = {
            "calls_per_request": float(calls[served].mean()) if served.any() else 0.0,
            "judge_calls_per_request": float(judged[served].mean()) if served.any() else 0.0,
            "escalations_per_request": float(escalations[served].mean()) if served.any() else 0.0,
        }
        return Trace(
            chosen=chosen,
            quality=take(episode.quality, chosen),
            cost_usd=np.where(served, paid, np.nan),
            latency_s=None if lat is None else np.where(served, latency, np.nan),
            seconds=time.process_time() - started,
            extra=extra,
        )

    def _warm_up(
        self, escalation: Escalation, env: Environment, cost_weight: float, seed: int, draws: np.ndarray
    ) -> None:
        """Stream the training part once: `bandit` learns from the chain's own choices (the final answer's
        quality only); `full` learns both actions at every step from the table's labels (`_full_information`)."""
        rng = np.random.default_rng([seed, WARMUP_SALT, 1])
        rows = rng.permutation(env.train_rows)
        available = env.available
        for row in rows.tolist():
            if self.warmup == "full" and isinstance(escalation, LearnedEscalation):
                chain = [k for k in self.chain if available[row, k]]
                if chain:
                    self._full_information(escalation, env, row, chain, 0, cost_weight, rng, draws[row], ())
                continue
            self._chain(escalation, env, row, env.quality[row], env.cost_usd[row], available[row], None,
                        cost_weight, rng, draws[row])  # fmt: skip

    def _full_information(
        self,
        learner: LearnedEscalation,
        env: Environment,
        row: int,
        chain: list[int],
        position: int,
        cost_weight: float,
        rng: np.random.Generator,
        draws: np.ndarray,
        earlier: tuple[float | None, ...],
    ) -> float:
        """The final quality the learner's chain reaches from `chain[position]` on, teaching it at every step what
        accepting and what escalating would have given (both known from the training labels); `earlier`: the
        confidences of the steps before `position`."""
        k = chain[position]
        quality = float(env.quality[row, k])
        if position == len(chain) - 1:
            return quality
        confidence = parse_judge_score(self.judge.reply_to(quality, *draws[k]))
        context = env.context(row, self.extractor)
        expected = self._price(env, chain[position + 1], context)
        step = learner.decide(context, position, env.model_names[k], confidence, expected, cost_weight, rng, earlier)
        escalated = self._full_information(
            learner, env, row, chain, position + 1, cost_weight, rng, draws, (*earlier, confidence)
        )
        learner.learn_both(step, quality, escalated)
        return escalated if step.escalate else quality

    def _price(self, env: Environment, k: int, context: Context) -> float:
        """Model k's expected cost for this prompt, priced as the service prices the next model of a chain
        (`live.NamedRouters`: its catalog prices × the prompt's tokens and its expected answer length); the mean
        cost over the training part when the prices are unknown."""
        spec = env.models[k]
        if spec.input_usd_per_mtok or spec.output_usd_per_mtok:
            return spec.cost_usd(context.input_tokens, spec.output_tokens or 250.0)
        return float(self.expected_cost[k]) if self.expected_cost is not None else 0.0

    def _chain(
        self,
        escalation: Escalation,
        env: Environment,
        row: int,
        quality: np.ndarray,
        cost: np.ndarray,
        available: np.ndarray,
        latency: np.ndarray | None,
        cost_weight: float,
        rng: np.random.Generator,
        draws: np.ndarray,
    ) -> tuple[int, float, float, int, int, int]:
        """One request through the chain: (model returned, paid, latency, answer calls, judge calls, escalations).
        `draws[k]`: the judge's random draws for model k's answer to this row (`SimulatedJudge.draws`)."""
        chain = [k for k in self.chain if available[k]]
        if not chain:
            return -1, 0.0, 0.0, 0, 0, 0
        names = env.model_names
        learned = self.learned is not None
        context = env.context(row, self.extractor) if learned else _NO_CONTEXT
        index = {names[k]: k for k in chain}

        def next_cost(model: str) -> float:
            return self._price(env, index[model], context) if learned else 0.0

        run = CascadeRun([names[k] for k in chain], escalation, context, cost_weight, rng, next_cost)
        budget, spent, lat_t, judged = self.max_cost, 0.0, 0.0, 0
        tokens = float(self.prompt_tokens[row]) if self.prompt_tokens is not None else 0.0
        while (model := run.next_model()) is not None:
            k = index[model]
            c = float(cost[k])
            if spent > 0 and c >= budget:
                break
            spent, budget = spent + c, budget - c
            lat_t += 0.0 if latency is None else float(latency[k])
            confidence, judge = None, None
            if not run.is_last:
                confidence = parse_judge_score(self.judge.reply_to(float(quality[k]), *draws[k]))
                judged += 1
                judge = ChainCall("judge", "judge", self.judge.cost(tokens), confidence=confidence)
            run.answered(ModelAnswer(model, "", c, 0.0), confidence, judge)
        result = run.result()
        k_final = index[result.answer.model] if result.answer is not None else -1
        if learned and k_final >= 0:
            result.learn(escalation, float(quality[k_final]))
        return k_final, result.cost_usd, lat_t, result.answer_calls, judged, result.escalations


_NO_CONTEXT = FeatureExtractor().extract("")
"""Threshold cascades do not read the prompt."""


class LLMRouterAgent:
    """An LLM as the router: right with probability `accuracy`, parsed like the live one, and paid for."""

    def __init__(
        self,
        spec: str,
        input_tokens: np.ndarray,
        *,
        accuracy: float = 0.8,
        garble: float = 0.0,
        price_in: float = 0.15,
        price_out: float = 0.6,
        out_tokens: float = 20.0,
        latency_s: float = 0.5,
        fallback: np.ndarray | None = None,
    ) -> None:
        if not 0 <= accuracy <= 1 or not 0 <= garble <= 1 or min(price_in, price_out, out_tokens, latency_s) < 0:
            raise InvalidInput(f"{spec}: accuracy and garble must be in [0, 1] and prices, tokens, latency >= 0")
        self.spec, self.input_tokens, self.accuracy, self.garble = spec, input_tokens, accuracy, garble
        self.price_in, self.price_out, self.out_tokens, self.latency = price_in, price_out, out_tokens, latency_s
        self.fallback = fallback

    def run(self, episode: Episode, env: Environment, cost_weight: float, seed: int) -> Trace:
        started = time.process_time()
        rng = np.random.default_rng([seed, STRATEGY_SALT, 2])
        garbler = np.random.default_rng([seed, STRATEGY_SALT, 3])
        best = oracle_choice(episode.truth, episode.cost_usd, episode.available, cost_weight)
        named = best.copy()
        wrong = (rng.random(episode.n_steps) >= self.accuracy) & (best >= 0)
        for t in np.flatnonzero(wrong).tolist():
            others = [k for k in np.flatnonzero(episode.available[t]).tolist() if k != best[t]]
            if others:
                named[t] = others[int(rng.integers(len(others)))]
        garbled = garbler.random(episode.n_steps) < self.garble
        names = episode.model_names
        order = self.fallback if self.fallback is not None else np.arange(len(names))
        chosen = np.full(episode.n_steps, -1, dtype=np.int64)
        for t in range(episode.n_steps):
            if named[t] < 0:
                continue
            candidates = [names[k] for k in np.flatnonzero(episode.available[t]).tolist()]
            reply = "I am not sure." if garbled[t] else f"{names[named[t]]}"
            pick = parse_choice(reply, candidates)
            if pick is None:  # the policy's choice: the cheapest available model
                pick = next(names[k] for k in order.tolist() if episode.available[t, k])
            chosen[t] = names.index(pick)
        trace = trace_of(episode, chosen, 0.0)
        own = (self.input_tokens[episode.rows] * self.price_in + self.out_tokens * self.price_out) / 1e6
        trace.cost_usd = trace.cost_usd + own
        if trace.latency_s is not None:
            trace.latency_s = trace.latency_s + self.latency
        trace.extra = {"router_cost_usd": float(own.mean()), "router_fallbacks": float(garbled.mean())}
        trace.seconds = time.process_time() - started
        return trace


def _chain_of(spec: Spec, env: Environment) -> list[int]:
    if spec.get("models"):
        names = [m.strip() for m in str(spec.get("models")).split(">") if m.strip()]
        if not names:  # `models=>`: a chain of no model answered nothing, and every mean was NaN
            raise InvalidInput(f"{spec.text}: models names no model; give a chain such as models=small>big")
        unknown = set(names) - set(env.model_names)
        if unknown:
            raise InvalidInput(f"{spec.text}: unknown models {quoted(sorted(unknown), env.model_names)}")
        twice = sorted({m for m in names if names.count(m) > 1})
        if twice:  # a second call of a model the judge rejected: paid again, the same answer judged again
            raise InvalidInput(f"{spec.text}: models lists {', '.join(twice)} more than once; a chain calls each "
                               "model at most once")
        return [env.model_names.index(m) for m in names]
    return np.argsort(mean_costs(env), kind="stable").tolist()


def _max_cost(spec: Spec) -> float:
    """`max_cost=` in USD per request; `inf` (the default) for none. `abc` was a ValueError traceback, `nan` a
    budget that every comparison failed."""
    value = spec.get("max_cost")
    if value is None or not value.strip():
        return math.inf
    try:
        out = float(value)
    except ValueError:
        raise InvalidInput(f"{spec.text}: max_cost={value!r} must be a number (USD per request) or inf") from None
    if math.isnan(out):
        raise InvalidInput(f"{spec.text}: max_cost must be a number (USD per request) or inf, got nan")
    return out


LEARNED_KEYS = {f.name for f in dataclasses.fields(EscalationParams)}
"""`learned-cascade`'s own settings: the fields of `EscalationParams`."""
_JUDGE_KEYS = {"threshold", "error", "noise", "judge", "judge_price", "max_cost", "models"}


def make_cascade(
    text: str, env: Environment, *, extractor: FeatureExtractor | None = None, warmup: str = "none"
) -> CascadeAgent:
    """`cascade[:…]` or `learned-cascade[:…]` for `env` (see the module docstring)."""
    spec = parse_spec(text)
    learned = spec.name == "learned-cascade"
    spec.check(_JUDGE_KEYS - {"threshold"} | LEARNED_KEYS if learned else _JUDGE_KEYS)
    noise, error = spec.float("noise", 0.0), spec.float("error", 0.1)
    if spec.get("judge") is not None:  # a judge given by its accuracy: noisy, never reversed unless told
        if spec.get("noise") is not None:
            raise InvalidInput(f"{text}: give the judge's accuracy (judge=) or its noise, not both")
        noise, error = SimulatedJudge.noise_for(spec.float("judge", 0.8)), spec.float("error", 0.0)
    params = None
    if learned:
        try:
            defaults = EscalationParams()
            params = EscalationParams(**{
                key: type(getattr(defaults, key))(spec.float(key, getattr(defaults, key))) for key in LEARNED_KEYS
            })  # fmt: skip
        except ValueError as exc:
            raise InvalidInput(f"{text}: {exc}") from exc
    tokens = np.array([estimate_tokens(p) for p in env.prompts], dtype=np.float64)
    return CascadeAgent(
        spec.text,
        _chain_of(spec, env),
        threshold=spec.float("threshold", 0.5),
        error=error,
        noise=noise,
        max_cost=_max_cost(spec),
        judge_price=spec.float("judge_price", 0.0),
        expected_cost=np.nan_to_num(mean_costs(env), posinf=0.0),
        prompt_tokens=tokens,
        learned=params,
        extractor=extractor,
        warmup=warmup,
    )


def make_llm_router(text: str, env: Environment) -> LLMRouterAgent:
    """`llm-router[:…]` for `env`."""
    spec = parse_spec(text)
    spec.check({"accuracy", "garble", "price_in", "price_out", "out_tokens", "latency_s"})
    tokens = np.array([estimate_tokens(p) for p in env.prompts], dtype=np.float64)
    return LLMRouterAgent(
        spec.text,
        tokens,
        accuracy=spec.float("accuracy", 0.8),
        garble=spec.float("garble", 0.0),
        price_in=spec.float("price_in", 0.15),
        price_out=spec.float("price_out", 0.6),
        out_tokens=spec.float("out_tokens", 20.0),
        latency_s=spec.float("latency_s", 0.5),
        fallback=np.argsort(mean_costs(env), kind="stable"),
    )
