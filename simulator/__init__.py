"""The simulator: answer "which policy, with which settings, saves how much at what quality?" before going live.

Environments (`dataset`, `synthetic`) stream prompts whose every model outcome is known; scenarios add events;
agents — the same `bandit_router.Router` the service runs, or the field's strategies — answer each prompt;
the policy learns only from the chosen model's outcome, while the metrics see every model's.

    from simulator import EnvSpec, Plan, simulate, write_report
    plan = Plan(env=EnvSpec.parse("synthetic:default"), policies=("vw-squarecb", "linucb", "random"),
                cost_weights=(20.0, 100.0), seeds=(0, 1, 2), scenarios=("drift",))
    write_report(simulate(plan, workers=2), "runs/demo")
"""

from .environments import Environment, EnvSpec, Episode, load_dataset, load_world, make_environment
from .report import summary, write_report
from .runner import Plan, RunResult, SimulationResult, simulate
from .scenarios import SCENARIOS, build_episode, make_scenario

__all__ = [
    "SCENARIOS",
    "EnvSpec",
    "Environment",
    "Episode",
    "Plan",
    "RunResult",
    "SimulationResult",
    "build_episode",
    "load_dataset",
    "load_world",
    "make_environment",
    "make_scenario",
    "simulate",
    "summary",
    "write_report",
]
