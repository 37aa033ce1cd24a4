"""The field's strategies that need ground truth or an offline fit, measured exactly like the bandit policies.

- `oracle`: per prompt, the available model with the highest reward q − λ·c (ties → cheaper). An upper bound.
  In a stochastic world it knows each model's success probability for the prompt, not the coin flip.
- `cascade`, `learned-cascade`, `llm-router`: see `cascades.py` (they drive the service's `bandit_router.cascade`).
- `classifier[:dim=256,ridge=1,folds=5]`: the classifier-based (predictive) router, `bandit_router`'s
  `SupervisedPolicy` — a ridge regression of each model's quality on the prompt's features, routing by
  argmax q̂ − λ·ĉ — fitted on the environment's **training part only**. Without a training part it is
  **cross-fitted**: the evaluated prompts are split into `folds` (seeded by the run), and each prompt is
  routed by the fit on the other folds, so no prompt is routed by a model trained on its own outcome.
"""

from __future__ import annotations

import time

import numpy as np

from bandit_router.errors import InvalidInput

from ..environments.base import Environment, Episode
from ..metrics import column_means, oracle_choice
from ..specs import parse_spec
from .base import Agent, Trace, trace_of


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


def make_strategy(text: str, env: Environment) -> Agent:
    """`oracle` for `env` (the cascades and the LLM router are built in `cascades.py`)."""
    spec = parse_spec(text)
    if spec.name == "oracle":
        spec.check(set())
        return OracleAgent()
    raise InvalidInput(f"unknown strategy {spec.name!r}")
