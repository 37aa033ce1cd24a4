"""The log in the core: what turns the stored decisions and feedback into learned policies.

    feedback.py      feedback rules as pure functions (`judge` → `Verdict`), reward windows, pricing
    policies.py      `PolicySet`: the live policy and its shadows; snapshots
    catalog.py       the live catalog: the configured one with the stored model events applied (start checks)
    follower.py      `LogFollower`: applies the log in order (writer, recovery, `rebuild_router`)
    escalations.py   learned cascades' escalation learners, learned from the chains stored in the log
    checkpoints.py   `Checkpointer`: snapshots at log positions, and loading the newest valid one
    budget_state.py  the budget pacer's durable state
    timeseries.py    time series from the per-minute rollup (the dashboard's charts)
    monitor.py       `Monitor`: the dashboard's bounded reads (series, recent decisions, live view, shadows)

The service (`bandit_router.service`) adds only the writer thread and HTTP.
"""

from .budget_state import BudgetState
from .catalog import LiveCatalog, live_catalog, stored_catalog
from .checkpoints import Checkpointer, fingerprint
from .escalations import EscalationLearners, learns_chain
from .feedback import (
    CALLER_POLICY,
    NAMED_ROUTER_POLICIES,
    FeedbackRules,
    Ruling,
    Verdict,
    average,
    close_window,
    feedback_record,
    judge,
    priced,
    unrouted,
    with_call,
)
from .follower import REPLAY_PAGE, LogEntry, LogFollower, rebuild_policies, rebuild_router
from .monitor import Monitor
from .policies import BUNDLE_MAGIC, PolicySet, build_router
from .timeseries import RANGES, Window, timeseries

__all__ = [
    "BUNDLE_MAGIC",
    "CALLER_POLICY",
    "NAMED_ROUTER_POLICIES",
    "RANGES",
    "REPLAY_PAGE",
    "BudgetState",
    "Checkpointer",
    "EscalationLearners",
    "FeedbackRules",
    "LiveCatalog",
    "LogEntry",
    "LogFollower",
    "Monitor",
    "PolicySet",
    "Ruling",
    "Verdict",
    "Window",
    "average",
    "build_router",
    "close_window",
    "feedback_record",
    "fingerprint",
    "judge",
    "learns_chain",
    "live_catalog",
    "priced",
    "rebuild_policies",
    "rebuild_router",
    "stored_catalog",
    "timeseries",
    "unrouted",
    "with_call",
]
