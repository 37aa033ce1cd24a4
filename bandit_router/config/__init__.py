"""Settings of the routing service: nested, typed sections, loaded in layers.

    sections.py  one frozen dataclass per section (server, storage, routing, feedback, limits, auth), each field
                 with its default and help text; `Secrets`
    settings.py  `Settings` (the sections, flat access by key name, `check()`), `KEYS`
    routers.py   `[[routers]]`: named routers (cascade, learned-cascade, llm-router), `RoutersSettings`
    loader.py    `load_settings`: defaults → TOML file → `BANDIT_ROUTER_*` environment → command-line flags;
                 `read_toml` and `layered`, shared with `bandit-router simulate`; `settings_file`: which file it reads

API keys never live in the file: they come from `BANDIT_ROUTER_API_KEYS` / `BANDIT_ROUTER_ADMIN_KEYS`
(comma-separated) or from key files (`api_keys_file`, `admin_keys_file`: one key per line, `#` comments).
They are kept as `Secrets`, whose `repr` shows only how many there are.
"""

from ..errors import ConfigError
from .loader import (
    DEFAULT_FILE,
    ENV_PREFIX,
    PARSERS,
    describe_keys,
    layered,
    load_settings,
    read_keys,
    read_toml,
    settings_file,
)
from .routers import STRATEGIES, RouterAlias, RoutersSettings, alias_clash, check_routers, parse_routers
from .sections import (
    AGGREGATIONS,
    MIN_KEY_LENGTH,
    SYNCHRONOUS,
    AuthSettings,
    FeedbackSettings,
    LimitsSettings,
    RoutingSettings,
    Secrets,
    ServerSettings,
    StorageSettings,
)
from .settings import KEYS, SECTIONS, Key, Settings

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_FILE",
    "ENV_PREFIX",
    "KEYS",
    "MIN_KEY_LENGTH",
    "PARSERS",
    "SECTIONS",
    "STRATEGIES",
    "SYNCHRONOUS",
    "AuthSettings",
    "ConfigError",
    "FeedbackSettings",
    "Key",
    "LimitsSettings",
    "RouterAlias",
    "RoutersSettings",
    "RoutingSettings",
    "Secrets",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "alias_clash",
    "check_routers",
    "describe_keys",
    "layered",
    "load_settings",
    "parse_routers",
    "read_keys",
    "read_toml",
    "settings_file",
]
