"""Exceptions of the core. The service maps them to HTTP statuses in one place (`service/errors.py`).

BanditRouterError
 ├── InvalidInput          a value a caller sent is not acceptable         → 422
 │    ├── CatalogError      a model catalog is malformed                   → 422
 │    └── UnknownModel      a model name is not in the catalog             → 422
 ├── UnknownDecision       feedback for a decision that was never made     → 404
 ├── ConflictingFeedback   a different second feedback for one decision    → 409
 ├── ConfigError           a configuration file or value is wrong          (start-up)
 └── UnknownPolicy         a policy spec names no registered policy        → 422
"""


class BanditRouterError(Exception):
    """Base class of every error bandit-router raises on purpose."""


class InvalidInput(BanditRouterError, ValueError):
    """A value a caller sent is not acceptable."""


class CatalogError(InvalidInput):
    """A model catalog is malformed."""


class UnknownModel(InvalidInput):
    """A model name is not in the router's catalog."""


class UnknownDecision(BanditRouterError, KeyError):
    """No decision has this id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown decision"


class ConflictingFeedback(BanditRouterError):
    """A different feedback was already recorded for this decision."""


class ConfigError(BanditRouterError, ValueError):
    """A configuration file or value is wrong."""


class UnknownPolicy(InvalidInput):
    """A policy spec names no registered policy, or gives it a setting it does not have."""
