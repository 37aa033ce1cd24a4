"""The agents by name, like the policies' registry: `make_agent(spec, env)` looks the spec's name up in `AGENTS`
(the simulator's own strategies) and otherwise builds a `RouterAgent` for a policy of `bandit_router`'s registry
(`vw-squarecb`, `linucb`, `fixed:<model>`, `random`, `rules`, …). Adding an agent = a module + one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bandit_router.errors import InvalidInput, UnknownModel
from bandit_router.features import FeatureExtractor
from bandit_router.hints import quoted
from bandit_router.policies import REGISTRY, Policy, check_models, make_policy
from bandit_router.policies.base import NOT_IN_CATALOG

from ..environments.base import Environment
from .base import Agent, PacerFactory
from .cascades import make_cascade, make_llm_router
from .classifier import classifier_agent
from .router_agent import RouterAgent
from .strategies import make_strategy


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What every run of a plan shares (see `RouterAgent` for each)."""

    warmup: str = "none"
    pacer_factory: PacerFactory | None = None
    extractor: FeatureExtractor | None = None
    cache_features: bool = True


@dataclass(frozen=True, slots=True)
class AgentEntry:
    build: Callable[[str, Environment, AgentOptions], Agent]
    summary: str


def _strategy(spec: str, env: Environment, options: AgentOptions) -> Agent:
    return make_strategy(spec, env)


def _cascade(spec: str, env: Environment, options: AgentOptions) -> Agent:
    return make_cascade(spec, env, extractor=options.extractor, warmup=options.warmup)


def _llm_router(spec: str, env: Environment, options: AgentOptions) -> Agent:
    return make_llm_router(spec, env)


def _classifier(spec: str, env: Environment, options: AgentOptions) -> Agent:
    return classifier_agent(spec, env, extractor=options.extractor, pacer_factory=options.pacer_factory)


def _router_agent(spec: str, factory: Callable[[int], Policy], options: AgentOptions) -> RouterAgent:
    return RouterAgent(
        spec,
        factory,
        warmup=options.warmup,
        pacer_factory=options.pacer_factory,
        extractor=options.extractor,
        cache_features=options.cache_features,
    )


def _mabwiser(spec: str, env: Environment, options: AgentOptions) -> Agent:
    from ..peers import mabwiser_factory  # MABWiser is a dev dependency: imported only when asked for

    return _router_agent(spec, mabwiser_factory(spec), options)


AGENTS: dict[str, AgentEntry] = {
    "oracle": AgentEntry(_strategy, "per prompt, the best available model at the run's λ (an upper bound)"),
    "cascade": AgentEntry(
        _cascade, "cheapest model first; escalate while an imperfect judge's score is below a threshold"
    ),
    "learned-cascade": AgentEntry(
        _cascade, "a cascade whose accept/escalate step is a contextual bandit, learned online"
    ),
    "llm-router": AgentEntry(_llm_router, "an LLM names the model; right with probability `accuracy`, paid for"),
    "classifier": AgentEntry(_classifier, "the classifier-based router (fitted offline, or cross-fitted)"),
    "mabwiser-linucb": AgentEntry(_mabwiser, "MABWiser's LinUCB as a peer"),
    "mabwiser-lints": AgentEntry(_mabwiser, "MABWiser's LinTS as a peer"),
}
"""The simulator's own agents; every other name is a policy of `bandit_router.policies.REGISTRY`."""

SIMULATOR_STRATEGIES = tuple(AGENTS)


def known_names() -> set[str]:
    return set(REGISTRY) | set(AGENTS)


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
    options = AgentOptions(warmup, pacer_factory, extractor or FeatureExtractor(), cache_features)
    name = spec.partition(":")[0]
    entry = AGENTS.get(name)
    if entry is not None:
        return entry.build(spec, env, options)
    if name not in REGISTRY:
        raise InvalidInput(f"unknown policy {quoted([name], known_names())}; known: {', '.join(sorted(known_names()))}")
    try:  # fail early on a bad spec, or a model a fixed or rules policy names outside the environment
        check_models(make_policy(spec), env.models)  # (`fixed:model=gpt-4o` too)
    except UnknownModel as exc:  # the message names the spec already; the models are the environment's
        message = str(exc).replace(NOT_IN_CATALOG, "which is not one of the environment's models:")
        raise InvalidInput(f"unknown model: {message}") from None
    return _router_agent(spec, lambda seed: make_policy(spec), options)
