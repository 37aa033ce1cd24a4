"""What every environment is: a pool of prompts with every model's true outcome, and seeded streams over it.

An `Environment` holds, for each prompt of its pool, the truth for every model (shape (n_prompts, n_models)):
quality (or, for a stochastic world, the probability of a success), cost in USD, and optionally output tokens
and latency; NaN marks a model that is unavailable for that prompt. `episode(seed)` turns it into an
`Episode`: the stream of prompts one run sees, with the per-step truth. Scenarios then transform the episode
(a model drifts, fails, arrives; prices or the domain mix change; feedback is delayed or noisy).

The policy never sees an episode: the runner reveals only the chosen model's outcome, through `Router.learn`.
The metrics see all of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.features import FeatureExtractor
from bandit_router.hints import quoted
from bandit_router.types import Context, Scalar

STREAM_SALT = 101
"""Seed offsets: the stream order, the Bernoulli draws and the router use independent generators."""
DRAWS_SALT = 202
LABELS_SALT = 203


@dataclass(frozen=True)
class Event:
    """Something that happens to the router at `step`: a model joins (`add_model`) or its catalog entry
    changes (`update_model`, e.g. a new price)."""

    step: int
    kind: str
    spec: ModelSpec


@dataclass(frozen=True)
class Mark:
    """A scenario's landmark for the reaction metrics: what happened, when, to which model (until `end`)."""

    kind: str
    step: int
    model: str = ""
    end: int | None = None


@dataclass(frozen=True)
class Feedback:
    """How feedback reaches the policy: after a delay (in steps), maybe never, maybe noisy.

    `delay_mean` 0 means at once. `delay_dist`: `exponential` (rounded), `fixed` or `uniform` on
    [0, 2·mean]. `lost`: the fraction of feedbacks that never arrive. `noise_sd`: Gaussian noise added to the
    observed quality (clipped to [0, 1]); `flip`: probability that the observed quality is 1 − q.
    """

    delay_mean: float = 0.0
    delay_dist: str = "exponential"
    lost: float = 0.0
    noise_sd: float = 0.0
    flip: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_dist not in ("exponential", "fixed", "uniform"):
            raise InvalidInput(f"delay distribution must be exponential, fixed or uniform, not {self.delay_dist!r}")
        if self.delay_mean < 0 or self.noise_sd < 0:
            raise InvalidInput("delay and noise must be >= 0")
        if not 0 <= self.lost < 1 or not 0 <= self.flip <= 1:
            raise InvalidInput("lost must be in [0, 1) and flip in [0, 1]")

    @property
    def delayed(self) -> bool:
        return self.delay_mean > 0 or self.lost > 0

    @property
    def noisy(self) -> bool:
        return self.noise_sd > 0 or self.flip > 0

    def merge(self, other: Feedback) -> Feedback:
        """Combine two scenarios' settings (the non-default value wins)."""
        default = Feedback()
        values = {
            f.name: getattr(other, f.name)
            if getattr(other, f.name) != getattr(default, f.name)
            else getattr(self, f.name)
            for f in dataclasses.fields(Feedback)
        }
        return Feedback(**values)


@dataclass(frozen=True, eq=False)
class Episode:
    """One seeded stream: step t shows prompt `rows[t]`; every array below has one row per step.

    `quality`, `cost_usd`, `available` (and `output_tokens`, `latency_s` when known): shape (n_steps, K),
    columns in the order of `models`. `expected`/`draws` are set for stochastic worlds only: the success
    probability and the uniform draw u, with quality = 1 if u < expected else 0 (so a scenario can move the
    probability and keep the same luck).
    """

    models: tuple[ModelSpec, ...]
    rows: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    quality: np.ndarray
    cost_usd: np.ndarray
    available: np.ndarray
    output_tokens: np.ndarray | None = None
    latency_s: np.ndarray | None = None
    expected: np.ndarray | None = None
    draws: np.ndarray | None = None
    initial_models: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    marks: tuple[Mark, ...] = ()
    feedback: Feedback = field(default_factory=Feedback)
    seed: int = 0

    @property
    def n_steps(self) -> int:
        return len(self.rows)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def truth(self) -> np.ndarray:
        """What a clairvoyant choice is based on: the success probabilities in a stochastic world (the oracle
        knows how good each model is for the prompt, not the coin flip), else the qualities."""
        return self.expected if self.expected is not None else self.quality

    def index(self, model: str) -> int:
        """Column of `model`, with a clear error for an unknown name."""
        names = self.model_names
        if model not in names:
            raise InvalidInput(f"unknown model {quoted([model], names)}; this environment has {list(names)}")
        return names.index(model)

    def replace(self, **changes: Any) -> Episode:
        return dataclasses.replace(self, **changes)


def natural_weights(domains: np.ndarray, n_domains: int) -> np.ndarray:
    counts = np.bincount(domains, minlength=n_domains).astype(np.float64)
    return counts / counts.sum()


class Environment:
    """A prompt pool with the truth for every model, and the streams (`episode`) a run sees.

    `eval_rows` are the prompts a run streams and scores; `train_rows` (possibly empty) the training part that
    offline-trained baselines fit on and that bandits may warm up on. `weights` is the domain mix of a
    stream (None: the evaluated rows in shuffled order, pass after pass).
    """

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        models: Sequence[ModelSpec],
        prompts: Sequence[str],
        domain_names: Sequence[str],
        domains: np.ndarray,
        quality: np.ndarray,
        cost_usd: np.ndarray,
        eval_rows: np.ndarray,
        train_rows: np.ndarray | None = None,
        output_tokens: np.ndarray | None = None,
        latency_s: np.ndarray | None = None,
        attributes: Sequence[Mapping[str, Scalar]] | None = None,
        stochastic: bool = False,
        weights: np.ndarray | None = None,
        default_steps: int | None = None,
        scenario_defaults: Mapping[str, Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
        dormant: Sequence[str] = (),
    ) -> None:
        n, k = quality.shape
        if cost_usd.shape != (n, k) or len(prompts) != n or len(domains) != n or len(models) != k:
            raise InvalidInput("environment arrays disagree in shape")
        self.kind = kind
        self.name = name
        self.models = tuple(models)
        self.prompts = tuple(prompts)
        self.domain_names = tuple(domain_names)
        self.domains = np.asarray(domains, dtype=np.int64)
        self.quality = quality
        self.cost_usd = cost_usd
        self.output_tokens = output_tokens
        self.latency_s = latency_s
        self.attributes = attributes
        self.stochastic = stochastic
        self.eval_rows = np.asarray(eval_rows, dtype=np.int64)
        self.train_rows = np.zeros(0, dtype=np.int64) if train_rows is None else np.asarray(train_rows, np.int64)
        self.weights = weights
        self.default_steps = default_steps
        self.scenario_defaults = dict(scenario_defaults or {})
        self.info = dict(info or {})
        self.dormant = frozenset(dormant)
        """Models of the world that are not routable unless a `new-model` scenario brings them in."""
        self._contexts: list[Context | None] = [None] * n
        if len(self.eval_rows) == 0:
            raise InvalidInput(f"{name}: no prompts to evaluate")

    # -- truth -------------------------------------------------------------------------------------------
    @property
    def available(self) -> np.ndarray:
        """(n_prompts, n_models) bool: the model has a known quality and cost for the prompt."""
        return np.isfinite(self.quality) & np.isfinite(self.cost_usd)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def missing_cells(self) -> int:
        """Unavailable (prompt, model) cells among the rows a run uses (evaluated and training)."""
        rows = np.concatenate([self.eval_rows, self.train_rows])
        return int((~self.available[rows]).sum())

    def labels(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """Training qualities of `rows`, shape (len(rows), K), as an offline log would hold them: the table's,
        or Bernoulli draws in a stochastic world; NaN for unavailable cells and for dormant models."""
        q = self.quality[rows]
        if self.stochastic:
            u = np.random.default_rng([seed, LABELS_SALT]).random(q.shape)
            q = np.where(np.isfinite(q), (u < q).astype(np.float64), np.nan)
        known = self.available[rows] & ~np.array([m in self.dormant for m in self.model_names])[None, :]
        return np.where(known, q, np.nan)

    # -- features ----------------------------------------------------------------------------------------
    def context(self, row: int, extractor: FeatureExtractor) -> Context:
        """The featurized prompt `row` (computed once, then cached: features are a pure function of the text)."""
        ctx = self._contexts[row]
        if ctx is None:
            attrs = self.attributes[row] if self.attributes is not None else None
            ctx = self._contexts[row] = extractor.extract(self.prompts[row], attributes=attrs)
        return ctx

    def contexts(self, rows: Sequence[int] | np.ndarray, extractor: FeatureExtractor) -> list[Context]:
        return [self.context(int(r), extractor) for r in rows]

    # -- streams -----------------------------------------------------------------------------------------
    def n_steps(self, steps: int | None = None, passes: int = 1) -> int:
        if steps is not None:
            if steps <= 0:
                raise InvalidInput("steps must be > 0")
            return steps
        if self.default_steps is not None and self.weights is not None:
            return self.default_steps * max(1, passes)
        return len(self.eval_rows) * max(1, passes)

    def episode(
        self,
        seed: int,
        *,
        steps: int | None = None,
        passes: int = 1,
        schedule: Sequence[tuple[int, np.ndarray]] | None = None,
    ) -> Episode:
        """The stream of run `seed`: `steps` prompts (default: `passes` passes over the evaluated rows).

        `schedule` is a list of (first step, domain weights) that fixes the domain mix from that step on; by
        default the mix is the environment's own (`weights`) or, for a dataset, its shuffled rows.
        """
        n = self.n_steps(steps, passes)
        rng = np.random.default_rng([seed, STREAM_SALT])
        if schedule is None and self.weights is None:
            reps = math.ceil(n / len(self.eval_rows))
            rows = np.concatenate([rng.permutation(self.eval_rows) for _ in range(reps)])[:n]
        else:
            base = (
                self.weights
                if self.weights is not None
                else natural_weights(self.domains[self.eval_rows], len(self.domain_names))
            )
            rows = self._mixed_rows(rng, n, list(schedule) if schedule else [(0, base)])
        quality = self.quality[rows]
        expected = draws = None
        if self.stochastic:
            expected = quality
            draws = np.random.default_rng([seed, DRAWS_SALT]).random(quality.shape)
            quality = np.where(np.isfinite(expected), (draws < expected).astype(np.float64), np.nan)
        available = self.available[rows]
        for k, name in enumerate(self.model_names):
            if name in self.dormant:
                available[:, k] = False
        return Episode(
            models=self.models,
            rows=rows,
            domains=self.domains[rows],
            domain_names=self.domain_names,
            quality=quality,
            cost_usd=self.cost_usd[rows],
            available=available,
            output_tokens=None if self.output_tokens is None else self.output_tokens[rows],
            latency_s=None if self.latency_s is None else self.latency_s[rows],
            expected=expected,
            draws=draws,
            initial_models=tuple(m for m in self.model_names if m not in self.dormant),
            seed=seed,
        )

    def _mixed_rows(self, rng: np.random.Generator, n: int, schedule: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Draw each step's domain from the schedule's mix, then the next prompt of that domain (each prompt of
        a domain once, in shuffled order, before any repeats)."""
        n_domains = len(self.domain_names)
        pools = [self.eval_rows[self.domains[self.eval_rows] == d] for d in range(n_domains)]
        has_rows = np.array([len(p) > 0 for p in pools])
        queues = [list(rng.permutation(p)) if len(p) else [] for p in pools]
        positions = [0] * n_domains
        schedule = sorted(schedule, key=lambda item: item[0])
        rows = np.empty(n, dtype=np.int64)
        for i, (start, weights) in enumerate(schedule):
            end = schedule[i + 1][0] if i + 1 < len(schedule) else n
            start, end = max(0, min(start, n)), max(0, min(end, n))
            if end <= start:
                continue
            w = np.asarray(weights, dtype=np.float64) * has_rows
            if w.sum() <= 0:
                raise InvalidInput("the domain mix gives no weight to any domain that has prompts")
            picks = rng.choice(n_domains, size=end - start, p=w / w.sum())
            for t, d in zip(range(start, end), picks.tolist(), strict=True):
                if positions[d] == len(queues[d]):
                    queues[d] = list(rng.permutation(pools[d]))
                    positions[d] = 0
                rows[t] = queues[d][positions[d]]
                positions[d] += 1
        return rows

    def describe(self) -> dict[str, Any]:
        """What a summary says about the environment."""
        available = self.available
        rows = np.concatenate([self.eval_rows, self.train_rows])
        missing = {m: int((~available[rows, k]).sum()) for k, m in enumerate(self.model_names)}
        return {
            "kind": self.kind,
            "name": self.name,
            "models": list(self.model_names),
            "domains": list(self.domain_names),
            "eval_prompts": len(self.eval_rows),
            "train_prompts": len(self.train_rows),
            "missing_cells": self.missing_cells,
            "missing_by_model": {m: v for m, v in missing.items() if v},
            "dormant_models": sorted(self.dormant),
            "prices": {
                m.name: {"input_usd_per_mtok": m.input_usd_per_mtok, "output_usd_per_mtok": m.output_usd_per_mtok}
                for m in self.models
            },
            **self.info,
        }
