"""bandit-router: route each LLM request to the model that answers it best for its cost, and learn from feedback.

The names a library user needs, importable from here (`from bandit_router import Router, Request, Outcome`):

- values: `Request`, `Message`, `Context`, `Decision`, `Outcome` (frozen dataclasses; see `bandit_router.types`)
- the router and its policies: `Router`, `make_policy`, `POLICIES` (the registry), `Policy` (the protocol)
- the catalog: `ModelSpec`, `Catalog`, `load_catalog`, `default_catalog`
- the reward: `RewardConfig`, `reward`
- budgets: `BudgetConfig`, `BudgetPacer`
- the service's settings: `Settings`, `load_settings` (the app itself: `bandit_router.service.create_app`)
- errors: `BanditRouterError` and its subclasses `InvalidInput`, `CatalogError`, `UnknownModel`,
  `UnknownDecision`, `ConflictingFeedback`, `ConfigError`, `UnknownPolicy`

Everything else (`bandit_router.store`, `bandit_router.log`, `bandit_router.evaluation`, …) is importable from its
module; `tests/test_public_api.py` pins this list.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .budgets import BudgetConfig, BudgetPacer
from .catalog import Catalog, ModelSpec, default_catalog, load_catalog
from .config import Settings, load_settings
from .errors import (
    BanditRouterError,
    CatalogError,
    ConfigError,
    ConflictingFeedback,
    InvalidInput,
    UnknownDecision,
    UnknownModel,
    UnknownPolicy,
)
from .policies import REGISTRY as POLICIES
from .policies import Policy, make_policy
from .reward import RewardConfig, reward
from .router import Router
from .types import Context, Decision, Message, Outcome, Request

try:
    __version__ = _version("bandit-router")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "POLICIES",
    "BanditRouterError",
    "BudgetConfig",
    "BudgetPacer",
    "Catalog",
    "CatalogError",
    "ConfigError",
    "ConflictingFeedback",
    "Context",
    "Decision",
    "InvalidInput",
    "Message",
    "ModelSpec",
    "Outcome",
    "Policy",
    "Request",
    "RewardConfig",
    "Router",
    "Settings",
    "UnknownDecision",
    "UnknownModel",
    "UnknownPolicy",
    "__version__",
    "default_catalog",
    "load_catalog",
    "load_settings",
    "make_policy",
    "reward",
]
