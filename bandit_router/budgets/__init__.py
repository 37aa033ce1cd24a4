"""Budgets and service targets: say what may be spent (or how much traffic a model may get, how slow the
answers may be) and let the router hold it while it maximises quality.

    config = BudgetConfig.from_strings(["avg_cost_usd=0.0005", "share:gpt-4o=0.3", "@acme:spend_usd=50/1d"])
    router = Router(models, "vw-squarecb", pacer=BudgetPacer(config))

`targets` holds the target types and their grammar, `config` the `BudgetConfig` that holds them (global and per
tenant, its table form), `pacer` the controller and its math.
"""

from .config import BudgetConfig
from .pacer import BudgetPacer
from .targets import (
    AvgCost,
    Latency,
    Share,
    Spend,
    Target,
    format_duration,
    parse_duration,
    parse_scoped_target,
    parse_target,
)

__all__ = [
    "AvgCost",
    "BudgetConfig",
    "BudgetPacer",
    "Latency",
    "Share",
    "Spend",
    "Target",
    "format_duration",
    "parse_duration",
    "parse_scoped_target",
    "parse_target",
]
