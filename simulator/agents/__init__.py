"""Agents: what runs through an episode and answers each prompt. Every agent returns a `Trace` (per step: the
model whose answer was returned, its true quality, everything paid), so every strategy is measured alike.

    base.py          `Agent`, `Trace`, `trace_of`, the seeds of a run's streams
    router_agent.py  `RouterAgent`: a real `bandit_router.Router` with any registered policy, bandit feedback
    strategies.py    the oracle: a strategy that needs the ground truth
    cascades.py      cascade, learned cascade, LLM-as-router: the service's `bandit_router.cascade` driven by
                     simulated judges and routing LLMs
    classifier.py    the classifier-based router (a `RouterAgent` whose policy is fitted offline)
    registry.py      `AGENTS` and `make_agent(spec, env)`

Imports go one way: registry → (router_agent, cascades → strategies, classifier) → base.
"""

from .base import FEEDBACK_SALT, ROUTER_SALT, WARMUP_SALT, Agent, PacerFactory, Trace, derived_seed, trace_of
from .cascades import CascadeAgent, LLMRouterAgent, SimulatedJudge, make_cascade, make_llm_router
from .classifier import CrossFitPolicy, classifier_agent
from .registry import AGENTS, SIMULATOR_STRATEGIES, AgentEntry, AgentOptions, known_names, make_agent
from .router_agent import WARMUPS, RouterAgent
from .strategies import OracleAgent, make_strategy, mean_costs

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
    "SimulatedJudge",
    "Trace",
    "classifier_agent",
    "derived_seed",
    "known_names",
    "make_agent",
    "make_cascade",
    "make_llm_router",
    "make_strategy",
    "mean_costs",
    "trace_of",
]
