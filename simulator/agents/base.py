"""What every agent shares: the `Agent` protocol, the `Trace` it returns, and the seeds of a run's streams."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.router import Pacer

from ..environments.base import Environment, Episode
from ..metrics import take

ROUTER_SALT = 404
FEEDBACK_SALT = 505
WARMUP_SALT = 606
CLASSIFIER_SALT = 707
STRATEGY_SALT = 808
JUDGE_SALT = 909

PacerFactory = Callable[[Sequence[ModelSpec], float], Pacer]
"""Builds a budget pacer for one run from every model the run will have (those a scenario adds later included: its
targets may name them) and λ (see `bandit_router.router.Pacer`)."""

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
