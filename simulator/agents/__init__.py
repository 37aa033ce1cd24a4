"""Agents: what runs through an episode and answers each prompt. Every agent returns a `Trace` (per step: the
model whose answer was returned, its true quality, everything paid), so every strategy is measured alike.

    base.py          `Agent`, `Trace`, `trace_of`, the seeds of a run's streams
    router_agent.py  `RouterAgent`: a real `bandit_router.Router` with any registered policy, bandit feedback
    strategies.py    oracle, cascade, LLM-as-router: strategies that need the ground truth
    classifier.py    the classifier-based router (a `RouterAgent` whose policy is fitted offline)
    registry.py      `AGENTS` and `make_agent(spec, env)`

Imports go one way: registry → (router_agent, strategies, classifier) → base.
"""

from .base import FEEDBACK_SALT, ROUTER_SALT, WARMUP_SALT, Agent, PacerFactory, Trace, derived_seed, trace_of
from .classifier import CrossFitPolicy, classifier_agent
from .registry import AGENTS, SIMULATOR_STRATEGIES, AgentEntry, AgentOptions, known_names, make_agent
from .router_agent import WARMUPS, RouterAgent
from .strategies import CascadeAgent, LLMRouterAgent, OracleAgent, make_strategy, mean_costs

__all__ = [
    "AGENTS",
    "FEEDBACK_SALT",
    "ROUTER_SALT",
    "SIMULATOR_STRATEGIES",
    "WARMUPS",
    "WARMUP_SALT",
    "Agent",
    "AgentEntry",
    "AgentOptions",
    "CascadeAgent",
    "CrossFitPolicy",
    "LLMRouterAgent",
    "OracleAgent",
    "PacerFactory",
    "RouterAgent",
    "Trace",
    "classifier_agent",
    "derived_seed",
    "known_names",
    "make_agent",
    "make_strategy",
    "mean_costs",
    "trace_of",
]
