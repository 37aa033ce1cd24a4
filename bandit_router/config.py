"""Settings of the routing service: one TOML file (`bandit-router.toml`) plus `BANDIT_ROUTER_*` overrides.

Precedence, highest first: command-line options → environment (`BANDIT_ROUTER_<KEY>`, e.g.
`BANDIT_ROUTER_DB=/var/lib/br.db`) → the TOML file → the defaults below. Every key of the file is one flat
name (see `KEYS`); tables (`policy_settings`) are given to the environment as JSON. Paths written in the file
are relative to the file's folder; paths from the environment or the command line to the working directory.

API keys never live in the file: they come from `BANDIT_ROUTER_API_KEYS` / `BANDIT_ROUTER_ADMIN_KEYS`
(comma-separated) or from key files (`api_keys_file`, `admin_keys_file`: one key per line, `#` comments).
They are kept as `Secrets`, whose `repr` shows only how many there are.

Every problem raises `ConfigError` naming the key (and the file or variable it came from).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budgets import BudgetConfig
from .catalog import Catalog, ModelSpec, default_catalog, load_catalog
from .errors import CatalogError, ConfigError, InvalidInput
from .policies import make_policy
from .reward import RewardConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "BANDIT_ROUTER_"
DEFAULT_FILE = "bandit-router.toml"
SYNCHRONOUS = ("normal", "full", "extra")
AGGREGATIONS = ("reject", "earliest", "average")
MIN_KEY_LENGTH = 16
_ENV_NOT_KEYS = {"CONFIG", "API_KEYS", "ADMIN_KEYS", "SERVE_ARGS"}
"""`BANDIT_ROUTER_*` variables that are not settings keys (the config file, the secrets, serve's hand-off)."""


class Secrets:
    """A set of API keys. Never printed: `repr` and `str` show only how many keys there are."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self._keys = tuple(keys)

    def reveal(self) -> tuple[str, ...]:
        """The keys themselves (for the authenticator only)."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secrets) and set(self._keys) == set(other._keys)

    def __hash__(self) -> int:
        return hash(len(self._keys))

    def __repr__(self) -> str:
        return f"Secrets(<{len(self._keys)} keys>)"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """Everything the service needs; build with `load_settings` (or directly, in tests)."""

    # server
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    access_log: bool = False
    opentelemetry: bool = False
    allowed_hosts: tuple[str, ...] = ()
    timeout_keep_alive_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    # storage
    db: Path = Path("bandit-router.db")
    synchronous: str = "normal"
    store_prompts: bool = False
    checkpoint_interval: int = 1000
    checkpoints_kept: int = 3
    wal_max_bytes: int = 64 * 1024 * 1024
    retention_days: float | None = None
    # routing
    catalog: Path | None = None
    models: tuple[ModelSpec, ...] = ()
    policy: str = "default"
    policy_settings: Mapping[str, Any] = field(default_factory=dict)
    shadow_policies: tuple[str, ...] = ()
    seed: int | None = None
    cold_start_rounds: int = 20
    cost_weight: float = 20.0
    latency_weight: float = 0.0
    # feedback
    reward_window_s: float | None = None
    default_reward: float | None = None
    aggregation: str = "reject"
    # budgets (targets the pacer holds; stored state wins over this table after a restart)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    # limits
    max_body_bytes: int = 1_048_576
    max_prompt_chars: int = 200_000
    max_models: int = 128
    # auth
    api_keys_file: Path | None = None
    admin_keys_file: Path | None = None
    api_keys: Secrets = field(default_factory=Secrets)
    admin_keys: Secrets = field(default_factory=Secrets)

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or bool(self.admin_keys)

    def load_catalog(self) -> Catalog:
        """The initial model catalog: the file `catalog`, the inline `models`, or the shipped default."""
        if self.catalog is not None:
            try:
                return load_catalog(self.catalog)
            except CatalogError as exc:
                raise ConfigError(f"catalog: {exc}") from exc
        if self.models:
            return Catalog(self.models, source="inline [[models]]")
        return default_catalog()

    def reward_config(self) -> RewardConfig:
        return RewardConfig(cost_weight=self.cost_weight, latency_weight=self.latency_weight)

    def fingerprint_source(self) -> dict[str, Any]:
        """What the learned state depends on: a checkpoint taken under other values is not restored."""
        return {
            "policy": self.policy,
            "policy_settings": dict(sorted(self.policy_settings.items())),
            "catalog": [m.to_json() for m in self.load_catalog()],
        }


@dataclass(frozen=True)
class Key:
    """One settings key: its kind (how to parse it from the environment) and a one-line description."""

    kind: str
    help: str


KEYS: dict[str, Key] = {
    "host": Key("str", "address to bind; keep 127.0.0.1 unless API keys are set and a proxy terminates TLS"),
    "port": Key("int", "TCP port"),
    "workers": Key("int", "server processes sharing the database (each follows the feedback log)"),
    "log_level": Key("str", "critical, error, warning, info or debug"),
    "access_log": Key("bool", "log every request line (costs about a third of a cheap endpoint's throughput)"),
    "opentelemetry": Key("bool", "let FastAPI's OpenTelemetry instrumentation report to the global providers"),
    "allowed_hosts": Key("strs", "Host header names accepted besides loopback ones when bound to a loopback "
                         "address (421 otherwise), e.g. [\"router.internal\", \"*.example.com\"], or [\"*\"] for any; "
                         "environment: a JSON list"),
    "timeout_keep_alive_s": Key("float", "seconds an idle keep-alive connection stays open after a reply"),
    "header_timeout_s": Key("float", "seconds a connection has to send a complete request line and headers (from "
                            "its opening or its previous reply); then it is closed"),
    "body_timeout_s": Key("float", "seconds a request has to send its whole body once its headers are in; then the "
                          "connection is closed"),
    "max_connections": Key("int", "open connections per process; one more gets 503 and is closed"),
    "db": Key("path", "SQLite database file (created on first start)"),
    "synchronous": Key("str", "SQLite synchronous: normal (survives an application crash) or full/extra (also "
                       "power loss)"),
    "store_prompts": Key("bool", "store the prompt text with each decision (the hashed features always are)"),
    "checkpoint_interval": Key("int", "learned feedbacks between two checkpoints of the learned state"),
    "checkpoints_kept": Key("int", "how many checkpoints to keep"),
    "wal_max_bytes": Key("int", "past this size of the SQLite WAL the writer copies it into the database and "
                         "truncates it (0: never; SQLite's passive checkpoints alone let it grow without bound)"),
    "retention_days": Key("optional_float", "delete decisions and feedback older than this many days once the "
                          "newest checkpoint holds them (unset: keep everything; see Durability)"),
    "catalog": Key("path", "model catalog TOML file (default: the catalog shipped with the package)"),
    "models": Key("models", "inline catalog: [[models]] tables (instead of `catalog`)"),
    "policy": Key("str", "policy spec, e.g. default, vw-squarecb or linucb:alpha=0.5 (`bandit-router policies`)"),
    "policy_settings": Key("table", "policy hyper-parameters, e.g. {gamma_scale = 20}"),
    "shadow_policies": Key("strs", "policy specs run next to the live one (they learn, their pmfs are logged, they "
                           "never choose), e.g. [\"linucb:alpha=0.5\"]; environment: a JSON list"),
    "seed": Key("optional_int", "seed of the router's sampler (random when unset)"),
    "cold_start_rounds": Key(
        "int",
        "feedbacks before a model loses its exploration floor (policies other than `default`, which sizes "
        "the floor by uncertainty)",
    ),
    "cost_weight": Key("float", "default λ: quality points worth 1 USD (a request may override it)"),
    "latency_weight": Key("float", "μ: quality points per second of latency"),
    "reward_window_s": Key("optional_float", "seconds after a decision during which its feedback is learned"),
    "default_reward": Key("optional_float", "quality learned for a decision without feedback when its window "
                          "closes"),
    "aggregation": Key("str", "a second, different feedback: reject (409), earliest (kept, not learned) or "
                       "average (learned as the mean when the window closes)"),
    "budgets": Key("budgets", "budget targets, e.g. {avg_cost_usd = 0.0005, tenants = {acme = {spend_usd = "
                   "\"50/1d\"}}} (see docs: budgets); PUT /v1/budgets changes them at run time"),
    "max_body_bytes": Key("int", "largest request body (413 beyond)"),
    "max_prompt_chars": Key("int", "largest prompt or sum of message contents, in characters (413 beyond)"),
    "max_models": Key("int", "most active models (the catalog, and POST /v1/models: 409 beyond)"),
    "api_keys_file": Key("path", "file with client API keys, one per line"),
    "admin_keys_file": Key("path", "file with admin API keys (model changes), one per line"),
}
_PATH_KEYS = {name for name, key in KEYS.items() if key.kind == "path"}


def _fail(where: str, name: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {name}: {problem}")


def _validate(s: Settings) -> None:
    def check(ok: bool, name: str, problem: str) -> None:
        if not ok:
            raise ConfigError(f"{name}: {problem}")

    check(bool(s.host) and " " not in s.host, "host", "must be a host name or address")
    check(1 <= s.port <= 65535, "port", f"must be in 1..65535, got {s.port}")
    check(1 <= s.workers <= 64, "workers", f"must be in 1..64, got {s.workers}")
    check(s.log_level in ("critical", "error", "warning", "info", "debug"), "log_level", f"unknown {s.log_level!r}")
    check(s.synchronous in SYNCHRONOUS, "synchronous", f"must be one of {', '.join(SYNCHRONOUS)}")
    check(s.checkpoint_interval >= 1, "checkpoint_interval", "must be >= 1")
    check(s.checkpoints_kept >= 1, "checkpoints_kept", "must be >= 1")
    check(s.wal_max_bytes >= 0, "wal_max_bytes", "must be >= 0 (0: never truncate)")
    if s.retention_days is not None:
        check(math.isfinite(s.retention_days) and s.retention_days > 0, "retention_days", "must be > 0 days")
    check(1 <= s.max_models <= 100_000, "max_models", "must be in 1..100000")
    check(not (s.catalog is not None and s.models), "catalog", "give either `catalog` or [[models]], not both")
    for name in ("cost_weight", "latency_weight"):
        value = getattr(s, name)
        check(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0, got {value}")
    check(s.cold_start_rounds >= 0, "cold_start_rounds", "must be >= 0")
    if s.reward_window_s is not None:
        check(math.isfinite(s.reward_window_s) and s.reward_window_s > 0, "reward_window_s", "must be > 0")
    if s.default_reward is not None:
        check(s.reward_window_s is not None, "default_reward", "needs reward_window_s (when does it apply?)")
        check(0.0 <= s.default_reward <= 1.0, "default_reward", "is a quality: must be in [0, 1]")
    check(s.aggregation in AGGREGATIONS, "aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
    if s.aggregation == "average":
        check(s.reward_window_s is not None, "aggregation", "average needs reward_window_s")
    check(s.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
    for name in ("timeout_keep_alive_s", "header_timeout_s", "body_timeout_s"):
        value = getattr(s, name)
        check(math.isfinite(value) and 0 < value <= 3600, name, f"must be in (0, 3600] seconds, got {value}")
    check(1 <= s.max_connections <= 1_000_000, "max_connections", "must be in 1..1000000")
    for host in s.allowed_hosts:
        check(isinstance(host, str) and bool(host) and host.isascii() and " " not in host and "/" not in host,
              "allowed_hosts", f"must be host names, got {host!r}")
    check(s.max_prompt_chars >= 1, "max_prompt_chars", "must be >= 1")
    if s.seed is not None:
        check(0 <= s.seed < 2**63, "seed", "must be a non-negative integer")
    try:
        make_policy(s.policy, **dict(s.policy_settings))
    except InvalidInput as exc:
        raise ConfigError(f"policy: {exc}") from exc
    check(len(set(s.shadow_policies)) == len(s.shadow_policies), "shadow_policies", "names a policy twice")
    check(s.policy not in s.shadow_policies, "shadow_policies", f"{s.policy!r} is already the live policy")
    for spec in s.shadow_policies:
        check(isinstance(spec, str) and bool(spec), "shadow_policies", f"must be policy specs, got {spec!r}")
        try:
            make_policy(spec)
        except InvalidInput as exc:
            raise ConfigError(f"shadow_policies: {exc}") from exc
    if s.catalog is not None:
        s.load_catalog()  # a missing or malformed catalog file fails now, not at the first request
    if s.catalog is not None or s.models:
        count = len(s.load_catalog())
        check(count <= s.max_models, "max_models", f"the catalog has {count} models; max_models is {s.max_models}")
    fallback = s.budgets.fallback_model
    if fallback is not None:
        check(fallback in s.load_catalog().names, "budgets", f"fallback_model {fallback!r} is not in the catalog")
    for keys, name in ((s.api_keys, "api_keys"), (s.admin_keys, "admin_keys")):
        for key in keys.reveal():
            check(len(key) >= MIN_KEY_LENGTH, name, f"every key needs at least {MIN_KEY_LENGTH} characters")
            check(key.isascii() and key.isprintable() and " " not in key, name, "keys must be printable ASCII "
                  "without spaces")


# -- parsing ------------------------------------------------------------------------------------------------
def _coerce(name: str, value: Any, where: str, base: Path | None) -> Any:
    """A TOML value (or a string from the environment) → the field's type."""
    kind = KEYS[name].kind
    from_env = isinstance(value, str) and base is None
    if kind in ("optional_int", "optional_float") and from_env and value.strip().lower() in ("", "none"):
        return None
    if kind in ("int", "optional_int"):
        if from_env:
            try:
                return int(value)
            except ValueError:
                raise _fail(where, name, f"must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, name, f"must be an integer, got {value!r}")
        return value
    if kind in ("float", "optional_float"):
        if from_env:
            try:
                value = float(value)
            except ValueError:
                raise _fail(where, name, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(where, name, f"must be a finite number, got {value!r}")
        return float(value)
    if kind == "bool":
        if from_env:
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise _fail(where, name, f"must be true or false, got {value!r}")
            return lowered in ("1", "true", "yes")
        if not isinstance(value, bool):
            raise _fail(where, name, f"must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(where, name, f"must be a string, got {value!r}")
        return value.strip().lower() if name in ("synchronous", "aggregation", "log_level") else value
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise _fail(where, name, f"must be a path, got {value!r}")
        path = Path(value).expanduser()
        return path if base is None or path.is_absolute() else base / path
    if kind == "strs":
        if from_env:
            try:
                value = json.loads(value)
            except ValueError:
                raise _fail(where, name, 'must be a JSON list of strings, e.g. ["linucb:alpha=0.5"]') from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(where, name, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if kind == "table":
        if from_env:
            try:
                value = json.loads(value)
            except ValueError:
                raise _fail(where, name, "must be a JSON object") from None
        if not isinstance(value, dict):
            raise _fail(where, name, f"must be a table, got {value!r}")
        return dict(value)
    if kind == "budgets":
        if from_env:
            try:
                value = json.loads(value)
            except ValueError:
                raise _fail(where, name, "must be a JSON object") from None
        try:
            return BudgetConfig.from_mapping(value)
        except InvalidInput as exc:
            raise _fail(where, name, str(exc)) from exc
    if kind == "models":
        if not isinstance(value, list) or not value:
            raise _fail(where, name, "must be a non-empty list of [[models]] tables")
        try:
            return tuple(ModelSpec.from_json(m) for m in value)
        except CatalogError as exc:
            raise _fail(where, name, str(exc)) from exc
    raise AssertionError(kind)


def read_keys(path: Path, name: str) -> tuple[str, ...]:
    """Keys from a key file: one per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        if path.stat().st_mode & 0o077:
            log.warning("%s %s is readable by other users; chmod 600 it", name, path)
    except OSError:
        pass
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ConfigError(f"{name}: {path} holds no key")
    return keys


def _env_keys(env: Mapping[str, str], variable: str) -> tuple[str, ...]:
    raw = env.get(ENV_PREFIX + variable, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the settings: `path` (or `$BANDIT_ROUTER_CONFIG`, or `./bandit-router.toml` when it exists), then
    the environment, then `overrides` (the command line's options, already typed)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such configuration file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        for secret in ("api_keys", "admin_keys"):
            if secret in data:
                raise ConfigError(
                    f"{file}: {secret}: keys do not belong in the configuration file; use "
                    f"{ENV_PREFIX}{secret.upper()} or {secret}_file"
                )
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ConfigError(f"{file}: unknown keys {unknown}; known keys: {', '.join(KEYS)}")
        base = file.resolve().parent
        for name, value in data.items():
            values[name] = _coerce(name, value, str(file), base)
        if "catalog" in values and "models" in values:
            raise ConfigError(f"{file}: give either `catalog` or [[models]], not both")
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name.upper() in _ENV_NOT_KEYS:
            continue
        if name not in KEYS or name == "models":
            log.warning("ignoring unknown environment variable %s", variable)
            continue
        values[name] = _coerce(name, raw, variable, None)
    for name, value in (overrides or {}).items():
        if name not in KEYS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = Path(value) if name in _PATH_KEYS and value is not None else value
    if values.get("catalog") is not None:
        values.pop("models", None)  # a catalog given later (environment, command line) replaces inline models
    api = list(_env_keys(env, "API_KEYS"))
    admin = list(_env_keys(env, "ADMIN_KEYS"))
    if values.get("api_keys_file") is not None:
        api += read_keys(values["api_keys_file"], "api_keys_file")
    if values.get("admin_keys_file") is not None:
        admin += read_keys(values["admin_keys_file"], "admin_keys_file")
    return Settings(**values, api_keys=Secrets(tuple(api)), admin_keys=Secrets(tuple(admin)))


def describe_keys() -> str:
    """The settings keys as a Markdown table (key, default, meaning): the README's table is checked against it."""
    defaults = Settings()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, key in KEYS.items():
        value = getattr(defaults, name)
        if name in ("catalog", "models"):
            shown = "shipped catalog"
        elif name == "budgets":
            shown = "none"
        elif value is None:
            shown = "unset"
        elif isinstance(value, bool):
            shown = f"`{str(value).lower()}`"
        elif isinstance(value, str | Path):
            shown = f'`"{value}"`'
        elif isinstance(value, Mapping):
            shown = "`{}`"
        elif isinstance(value, tuple) and not value:
            shown = "`[]`"
        else:
            shown = f"`{value}`"
        rows.append(f"| `{name}` | {shown} | {key.help} |")
    return "\n".join(rows)
