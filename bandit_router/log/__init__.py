"""The log in the core: what turns the stored decisions and feedback into learned policies.

    feedback.py      feedback rules as pure functions (`judge` → `Verdict`), reward windows, pricing
    policies.py      `PolicySet`: the live policy and its shadows; snapshots
    follower.py      `LogFollower`: applies the log in order (writer, recovery, `rebuild_router`)
    checkpoints.py   `Checkpointer`: snapshots at log positions, and loading the newest valid one
    budget_state.py  the budget pacer's durable state

The service (`bandit_router.service`) adds only the writer thread and HTTP.
"""

from .budget_state import BudgetState
from .checkpoints import Checkpointer, fingerprint
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
from .follower import REPLAY_PAGE, LogEntry, LogFollower, rebuild_router
from .policies import BUNDLE_MAGIC, PolicySet, build_router

__all__ = [
    "BUNDLE_MAGIC",
    "CALLER_POLICY",
    "NAMED_ROUTER_POLICIES",
    "REPLAY_PAGE",
    "BudgetState",
    "Checkpointer",
    "FeedbackRules",
    "LogEntry",
    "LogFollower",
    "PolicySet",
    "Ruling",
    "Verdict",
    "average",
    "build_router",
    "close_window",
    "feedback_record",
    "fingerprint",
    "judge",
    "priced",
    "rebuild_router",
    "unrouted",
    "with_call",
]
