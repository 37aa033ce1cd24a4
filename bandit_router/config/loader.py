"""The layered loader: defaults → a TOML file → `BANDIT_ROUTER_*` environment variables → command-line flags.

`layered()` and `read_toml()` are shared with `bandit-router simulate`; `load_settings()` builds the service's
`Settings` with them. Paths written in a file are relative to the file's folder (also the files its policy specs
name: `rules:file=…`, `supervised:table=…`); paths from the environment or the command line to the working
directory. A value is parsed by its field's type (`PARSERS`); every problem
raises `ConfigError` naming the key and the file or variable it came from.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..budgets import BudgetConfig
from ..catalog import CATALOG_KEYS, ModelSpec, check_entry
from ..errors import CatalogError, ConfigError, InvalidInput
from ..hints import close_names, closest
from ..jsonkeys import DuplicateKey, once_each
from ..store.location import Database, DatabaseURL, parse_database
from ..tomlfile import TOMLFileError, load_toml_file
from .routers import RouterAlias, parse_routers
from .sections import Secrets
from .settings import KEYS, SECTIONS, Key, Settings

log = logging.getLogger("bandit_router.config")

ENV_PREFIX = "BANDIT_ROUTER_"
DEFAULT_FILE = "bandit-router.toml"
_ENV_NOT_KEYS = {"CONFIG", "API_KEYS", "ADMIN_KEYS", "SERVE_ARGS", "SERVE_LIMITS", "SERVE_METRICS"}
"""`BANDIT_ROUTER_*` variables that are not settings keys (the config file, the secrets, serve's hand-off to its
workers: `service.app.SERVE_ARGS`, `service.protocol.LIMITS_VARIABLE`, `service.metricsdir.MARKER`)."""


# -- shared with the simulator ------------------------------------------------------------------------------------
def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; `ConfigError` when it is missing or not TOML."""
    file = Path(path)
    try:
        return load_toml_file(file)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except TOMLFileError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def layered(*layers: Mapping[str, Any] | None, none_is_unset: bool = True) -> dict[str, Any]:
    """Merge layers, lowest precedence first. With `none_is_unset`, a value of None in a layer means "not given
    there" (a flag left out); without, it sets the key to None (`BANDIT_ROUTER_SEED=""`)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None or not none_is_unset})
    return out


# -- parsing a value by its type ------------------------------------------------------------------------------------
class _Bad(Exception):
    """A value that does not fit its key (the message is the problem)."""


def _int(value: Any, from_env: bool) -> int:
    if from_env:
        try:
            return int(value)
        except ValueError:
            raise _Bad(f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"must be an integer, got {value!r}")
    return value


def _float(value: Any, from_env: bool) -> float:
    if from_env:
        try:
            value = float(value)
        except ValueError:
            raise _Bad(f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"must be a finite number, got {value!r}")
    return float(value)


def _bool(value: Any, from_env: bool) -> bool:
    if from_env:
        lowered = value.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no"):
            raise _Bad(f"must be true or false, got {value!r}")
        return lowered in ("1", "true", "yes")
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _str(value: Any, from_env: bool) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {value!r}")
    return value


def _path(value: Any, from_env: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise _Bad(f"must be a path, got {value!r}")
    return Path(value).expanduser()


def _database(value: Any, from_env: bool) -> Database:
    if not isinstance(value, str) or not value:
        raise _Bad("must be a file path or a postgresql:// URL")
    try:
        return parse_database(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _json(value: Any, from_env: bool, example: str) -> Any:
    if not from_env:
        return value
    try:
        return json.loads(value, object_pairs_hook=once_each)  # a key given twice is refused, as TOML does
    except DuplicateKey as exc:
        raise _Bad(str(exc)) from None
    except ValueError:
        raise _Bad(f"must be {example}") from None
    except RecursionError:  # `json` decodes nested arrays and objects recursively: a traceback, exit status 1
        raise _Bad(f"must be {example}; its arrays or objects are nested too deeply to be read") from None


def _strs(value: Any, from_env: bool) -> tuple[str, ...]:
    value = _json(value, from_env, 'a JSON list of strings, e.g. ["a", "b"]')  # for shadow_policies, allowed_hosts, …
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"must be a list of strings, got {value!r}")
    return tuple(value)


def _table(value: Any, from_env: bool) -> dict[str, Any]:
    value = _json(value, from_env, "a JSON object")
    if not isinstance(value, dict):
        raise _Bad(f"must be a table, got {value!r}")
    return dict(value)


def _budgets(value: Any, from_env: bool) -> BudgetConfig:
    try:
        return BudgetConfig.from_mapping(_json(value, from_env, "a JSON object"))
    except InvalidInput as exc:  # its message names the table already: "budgets: …", "budgets.tenants.acme: …"
        raise _Bad(str(exc).removeprefix("budgets: ").removeprefix("budgets.")) from exc


def _models(value: Any, from_env: bool) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad("must be a non-empty list of [[models]] tables")
    try:
        return tuple(check_entry(ModelSpec.from_json(m)) for m in value)
    except CatalogError as exc:
        raise _Bad(str(exc)) from exc


def _routers(value: Any, from_env: bool) -> tuple[RouterAlias, ...]:
    value = _json(value, from_env, 'a JSON list of objects, e.g. [{"name": "cascade", "strategy": "cascade", …}]')
    try:
        return parse_routers(value)
    except ConfigError as exc:
        raise _Bad(str(exc).removeprefix("routers: ")) from exc


PARSERS: dict[Any, Callable[[Any, bool], Any]] = {
    int: _int,
    float: _float,
    bool: _bool,
    str: _str,
    Path: _path,
    Database: _database,
    tuple[str, ...]: _strs,
    Mapping[str, Any]: _table,
    BudgetConfig: _budgets,
    tuple[ModelSpec, ...]: _models,
    tuple[RouterAlias, ...]: _routers,
}
"""A field's type (without `| None`) → how to read it from TOML (`from_env` False) or from a string."""


def _parse(name: str, value: Any, where: str, base: Path | None) -> Any:
    """A TOML value (or a string from the environment, `base` None) → the key's type."""
    key: Key = KEYS[name]
    from_env = isinstance(value, str) and base is None
    kind, optional = key.type, False
    if getattr(kind, "__args__", None) and type(None) in kind.__args__ and getattr(kind, "__origin__", None) is None:
        (kind,) = [a for a in kind.__args__ if a is not type(None)]
        optional = True
    if optional and from_env and value.strip().lower() in ("", "none"):
        return None
    try:
        parsed = PARSERS[kind](value, from_env)
    except _Bad as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None
    if key.lower:
        parsed = parsed.strip().lower()
    if kind in (Path, Database) and isinstance(parsed, Path) and base is not None and not parsed.is_absolute():
        parsed = base / parsed
    return parsed


POLICY_FILE_KEYS = ("policy", "policy_settings", "shadow_policies")
"""Keys whose policies may name files (`rules:file=…`, `supervised:table=…`): relative ones written in a
configuration file are read from its folder (`RoutingSettings.folders`)."""


# -- the service's settings -------------------------------------------------------------------------------------
def read_keys(path: Path, name: str) -> tuple[str, ...]:
    """Keys from a key file: one per line; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # after a byte-order mark (Windows Notepad writes one)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # its bytes are never shown: they may be a key
        raise ConfigError(f"{name}: {path} is not UTF-8 text") from None
    try:
        if path.stat().st_mode & 0o077:
            log.warning("%s %s is readable by other users; chmod 600 it", name, path)
    except OSError:
        pass
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ConfigError(f"{name}: {path} holds no key")
    return keys


def _did_you_mean(name: str, *also: tuple[str, Iterable[str]], prefix: str = "", upper: bool = False) -> str:
    """` (did you mean cost_weight?)` for a misspelt key (or one of `also`'s (kind, names)), else ``."""
    kinds = (("key", tuple(KEYS)), *((kind, tuple(names)) for kind, names in also))
    for kind, names in kinds:  # a close whole name of any kind first, then a close word (`hints.close_names`)
        whole = closest(name, names)
        if whole is not None:
            return _hint(kind, [whole], prefix, upper)
    for kind, names in kinds:
        close = close_names(name, names)
        if close:
            return _hint(kind, close, prefix, upper)
    return ""


def _hint(kind: str, names: list[str], prefix: str, upper: bool) -> str:
    found = [f"{prefix}{n.upper() if upper else n}" for n in names]
    return f" (did you mean {' or '.join('[' + f + ']' if kind == 'section' else f for f in found)}?)"


CATALOG_ONLY_KEYS = set(CATALOG_KEYS) - set(KEYS)
"""Top-level keys of a catalog file that a configuration file does not have (`prices_source`, `prices_read_on`)."""


def _file_layer(file: Path) -> dict[str, Any]:
    data = read_toml(file)
    for secret in ("api_keys", "admin_keys"):
        if secret in data:
            raise ConfigError(
                f"{file}: {secret}: keys do not belong in the configuration file; use "
                f"{ENV_PREFIX}{secret.upper()} or {secret}_file"
            )
    flat: dict[str, Any] = {}
    for name, value in data.items():  # `[server]`, `[storage]`, … tables hold their section's keys
        if name in SECTIONS and name != "budgets" and isinstance(value, dict):
            for key, inner in value.items():
                if KEYS.get(key, Key("", None, "")).section != name:
                    owner = KEYS[key].section if key in KEYS else ""
                    hint = f" (it belongs in [{owner}], or at the top level)" if owner else _did_you_mean(key)
                    raise ConfigError(f"{file}: [{name}] has no key {key!r}{hint}")
                flat[key] = inner
        else:
            flat[name] = value
    unknown = sorted(set(flat) - set(KEYS))
    if unknown and set(unknown) <= CATALOG_ONLY_KEYS:  # a copy of the shipped catalog given as --config
        raise ConfigError(f"{file}: unknown keys {', '.join(map(repr, unknown))}: this is a catalog file, not a "
                          f"configuration file: name it in a configuration file in its folder, "
                          f"catalog = \"{file.name}\" (a relative path is read from the configuration file's "
                          f"folder), or {ENV_PREFIX}CATALOG={file}")
    if unknown:
        named = ", ".join(f"{name!r}{_did_you_mean(name, ('section', SECTIONS))}" for name in unknown)
        raise ConfigError(f"{file}: unknown keys {named}; known keys: {', '.join(KEYS)}")
    base = file.resolve().parent
    values = {name: _parse(name, value, str(file), base) for name, value in flat.items()}
    if "catalog" in values and "models" in values:
        raise ConfigError(f"{file}: give either `catalog` or [[models]], not both")
    return values


ENV_VARIABLES = ("config", "api_keys", "admin_keys")
"""The `BANDIT_ROUTER_*` variables a user sets that are not settings keys: a misspelt one (`BANDIT_ROUTER_API_KEY`,
which left the service without keys) is told the one it meant."""


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX) :].lower()
        if name.upper() in _ENV_NOT_KEYS:
            continue
        if name == "models":  # a key, but not one the environment can give: it would suggest itself
            log.warning("ignoring %s: inline [[models]] tables belong in the configuration file; point "
                        "%sCATALOG at a catalog file instead", variable, ENV_PREFIX)
            continue
        if name not in KEYS:
            whole = closest(name, (*ENV_VARIABLES, *KEYS))  # the closest of both kinds: `ADMIN_KEY`, `ADMIN_KEYS`
            log.warning("ignoring unknown environment variable %s%s", variable,
                        _hint("key", [whole], ENV_PREFIX, True) if whole is not None
                        else _did_you_mean(name, ("variable", ENV_VARIABLES), prefix=ENV_PREFIX, upper=True))
            continue
        values[name] = _parse(name, raw, variable, None)
    return values


def _env_keys(env: Mapping[str, str], variable: str) -> tuple[str, ...]:
    raw = env.get(ENV_PREFIX + variable, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def settings_file(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> str | Path | None:
    """The settings file `load_settings` reads: `path`, else `$BANDIT_ROUTER_CONFIG`, else `./bandit-router.toml`
    when it exists; None when there is none (defaults and the environment only)."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    return path


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    stored_models: bool = False,
) -> Settings:
    """Read and check the settings: `path` (or `$BANDIT_ROUTER_CONFIG`, or `./bandit-router.toml` when it
    exists), then the environment, then `overrides` (the command line's options, already typed).
    `stored_models`: for the service's start, which checks the catalog's models once it has read the models
    added and retired at run time (`Settings.check`)."""
    env = os.environ if env is None else env
    path = settings_file(path, env)
    flags: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name not in KEYS:
            raise ConfigError(f"unknown setting {name!r}")
        if KEYS[name].type == Database and value is not None:
            try:
                flags[name] = parse_database(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            continue
        flags[name] = Path(value) if KEYS[name].type in (Path, Path | None) and value is not None else value
    file_values = _file_layer(Path(path)) if path is not None else {}
    env_values = _env_layer(env)
    values = layered(file_values, env_values, flags, none_is_unset=False)
    if path is not None:  # files named in the policy specs the file gives are read from its folder too
        folder = Path(path).resolve().parent
        from_file = [k for k in POLICY_FILE_KEYS if k in file_values and k not in env_values and k not in flags]
        values["folders"] = {key: folder for key in from_file}
    if values.get("catalog") is not None:
        values.pop("models", None)  # a catalog given later (environment, command line) replaces inline models
    api = list(_env_keys(env, "API_KEYS"))
    admin = list(_env_keys(env, "ADMIN_KEYS"))
    try:
        if values.get("api_keys_file") is not None:
            api += read_keys(values["api_keys_file"], "api_keys_file")
        if values.get("admin_keys_file") is not None:
            admin += read_keys(values["admin_keys_file"], "admin_keys_file")
        settings = Settings(**values, api_keys=Secrets(tuple(api)), admin_keys=Secrets(tuple(admin)))
        return settings.check(stored_models=stored_models)
    except ConfigError as exc:
        variables = _from_environment(str(exc), set(env_values) - set(flags))
        if not variables:
            raise
        raise ConfigError(f"{', '.join(variables)}: {exc}") from None


_DEPENDS_ON = {"policy": ("policy", "policy_settings"), "policy_settings": ("policy_settings", "policy"),
               "retention_days": ("retention_days", "reward_window_s")}
"""A refused key's message may be about these keys' values too (a policy's settings, a window the days must
exceed)."""


def _from_environment(message: str, from_env: set[str]) -> list[str]:
    """The `BANDIT_ROUTER_*` variables that gave the value a checked setting's message is about (it starts with
    its key: `port: must be in 1..65535`), so that the message names them: the key alone sent the reader to a
    configuration file that says something else."""
    key = message.partition(":")[0]
    if key not in KEYS:
        return []
    return [f"{ENV_PREFIX}{name.upper()}" for name in _DEPENDS_ON.get(key, (key,)) if name in from_env]


def describe_keys() -> str:
    """The settings keys as a Markdown table (key, default, meaning), section by section: the docs' configuration
    page is generated from it and checked against it."""
    defaults = Settings()
    rows = ["| key | section | default | meaning |", "|---|---|---|---|"]
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
        elif isinstance(value, str | Path | DatabaseURL):
            shown = f'`"{value}"`'
        elif isinstance(value, Mapping):
            shown = "`{}`"
        elif isinstance(value, tuple) and not value:
            shown = "`[]`"
        else:
            shown = f"`{value}`"
        rows.append(f"| `{name}` | {key.section} | {shown} | {key.help} |")
    return "\n".join(rows)
