"""The policy registry: one line per policy. A spec string names a policy and its settings:

    default                          default:shrinkage=8,exploration=0.8
    vw-squarecb                      vw-squarecb:gamma_scale=50,power_t=0
    linucb:alpha=0.5,dim=128         lints:v=0.1
    egreedy:epsilon=0.05             ucb1   thompson:dist=gaussian
    fixed:gpt-4o-mini                random
    rules:file=rules.toml            supervised:table=outcomes.csv.gz

`make_policy(spec)` turns a spec (string, or name plus keyword settings) into a fresh policy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import ModelSpec
from ..errors import InvalidInput, UnknownPolicy
from ..hints import quoted
from ..setting_values import type_name, typed_value
from .base import BasePolicy, NoParams, Policy
from .baselines import FixedParams, FixedPolicy, RandomPolicy
from .context_free import ContextFreeParams, ContextFreePolicy
from .hierarchical import HierarchicalParams, HierarchicalThompsonPolicy
from .linear import LinearParams, LinearPolicy
from .rules import RulesParams, RulesPolicy
from .supervised import SupervisedParams, SupervisedPolicy, warm_start
from .vw import VWParams, VWPolicy


@dataclass(frozen=True)
class Entry:
    """How to build one registered policy: its class, its params class, fixed settings, a summary."""

    factory: Callable[..., Policy]
    params: type
    preset: Mapping[str, Any]
    summary: str
    positional: str = ""
    """The setting a bare value after the colon fills (`fixed:gpt-4o` → model=gpt-4o)."""
    ignores: frozenset[str] = frozenset()
    """Fields of `params` this entry does not use (another exploration's settings, or its preset): giving one
    is an error, not a silent no-op (`vw-greedy:temperature=5`)."""
    files: frozenset[str] = frozenset()
    """Settings that name a file to read (`rules:file=…`): a relative one is read from `make_policy`'s `folder`."""


def _ignoring(*names: str) -> frozenset[str]:
    return frozenset(names)


_VW_EXPLORATION = ("exploration", "epsilon", "temperature", "gamma_scale", "gamma_exponent")


REGISTRY: dict[str, Entry] = {
    "default": Entry(
        HierarchicalThompsonPolicy,
        HierarchicalParams,
        {},
        "Thompson sampling on per-model quality, refined by shrunk prompt corrections (sample-efficient)",
    ),
    "vw-greedy": Entry(
        VWPolicy,
        VWParams,
        {"exploration": "greedy"},
        "VW cb_adf, greedy on q̂ − λĉ",
        ignores=_ignoring(*_VW_EXPLORATION),
    ),
    "vw-egreedy": Entry(
        VWPolicy,
        VWParams,
        {"exploration": "egreedy"},
        "VW cb_adf, ε-greedy",
        ignores=_ignoring("exploration", "temperature", "gamma_scale", "gamma_exponent"),
    ),
    "vw-softmax": Entry(
        VWPolicy,
        VWParams,
        {"exploration": "softmax"},
        "VW cb_adf, softmax (Boltzmann)",
        ignores=_ignoring("exploration", "epsilon", "gamma_scale", "gamma_exponent"),
    ),
    "vw-squarecb": Entry(
        VWPolicy,
        VWParams,
        {"exploration": "squarecb"},
        "VW cb_adf, SquareCB",
        ignores=_ignoring("exploration", "epsilon", "temperature"),
    ),
    "linucb": Entry(
        LinearPolicy, LinearParams, {}, "linear UCB, one ridge regression per model", ignores=_ignoring("v", "n_draws")
    ),
    "lints": Entry(
        LinearPolicy, LinearParams, {}, "linear Thompson sampling, one ridge per model", ignores=_ignoring("alpha")
    ),
    "egreedy": Entry(
        ContextFreePolicy,
        ContextFreeParams,
        {},
        "context-free ε-greedy",
        ignores=_ignoring("c", "dist", "sigma", "n_draws"),
    ),
    "ucb1": Entry(
        ContextFreePolicy,
        ContextFreeParams,
        {},
        "context-free UCB1",
        ignores=_ignoring("epsilon", "dist", "sigma", "n_draws"),
    ),
    "thompson": Entry(
        ContextFreePolicy,
        ContextFreeParams,
        {},
        "context-free Thompson (Beta or Gaussian)",
        ignores=_ignoring("epsilon", "c"),
    ),
    "fixed": Entry(FixedPolicy, FixedParams, {}, "always one model", positional="model"),
    "random": Entry(RandomPolicy, NoParams, {}, "uniform over the allowed models"),
    "rules": Entry(
        RulesPolicy, RulesParams, {}, "ordered rules → model (rule-based strategy)", "file", files=frozenset({"file"})
    ),
    "supervised": Entry(
        SupervisedPolicy, SupervisedParams, {}, "ridge per model, trained offline", "table", files=frozenset({"table"})
    ),
}

CONTEXTUAL = ("default", "vw-greedy", "vw-egreedy", "vw-softmax", "vw-squarecb", "linucb", "lints")
CONTEXT_FREE = ("egreedy", "ucb1", "thompson")


def parse_settings(
    spec: str, rest: str, positional: str = "", error: type[InvalidInput] = InvalidInput
) -> dict[str, str]:
    """The settings after a spec's first colon: a bare `value` (fills `positional`) or `k=v,k=v`, each key once.

    Shared by policy specs and the simulator's scenario and strategy specs; `error` is the exception raised.
    """
    settings: dict[str, str] = {}
    if not rest:
        return settings
    if "=" not in rest:
        if not positional:
            raise error(f"{spec}: settings must be key=value, got {rest!r}")
        settings[positional] = rest
        return settings
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise error(f"{spec}: bad setting {part!r}, expected key=value")
        if key.strip() in settings:
            raise error(f"{spec}: setting {key.strip()} is given twice")
        settings[key.strip()] = value.strip()
    return settings


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name[:value|:k=v,k=v]` → (name, settings as strings)."""
    if not isinstance(spec, str):  # "'NoneType' object has no attribute 'strip'"
        raise UnknownPolicy(f"a policy spec is a string such as \"linucb:alpha=0.5\", got {type(spec).__name__}; "
                            f"known policies: {', '.join(REGISTRY)}")
    name, _, rest = spec.strip().partition(":")
    if name not in REGISTRY:
        raise UnknownPolicy(f"unknown policy {quoted([name], REGISTRY)}; known: {', '.join(REGISTRY)}")
    return name, parse_settings(spec.strip(), rest, REGISTRY[name].positional, UnknownPolicy)


def in_folder(name: str, settings: Mapping[str, Any], folder: Path | None) -> dict[str, Any]:
    """`settings` of policy `name` with each file it names (`Entry.files`) read from `folder` when relative (a
    configuration file's folder; None: the working directory). `~` is the home directory."""
    out = dict(settings)
    for key in REGISTRY[name].files & set(out):
        value = out[key]
        if isinstance(value, str) and value.strip():
            path = Path(value.strip()).expanduser()
            out[key] = str(path if folder is None or path.is_absolute() else folder / path)
    return out


def settings_of(name: str) -> dict[str, Any]:
    """The settings a registered policy takes (its params' fields but those it ignores), with their defaults.

    Exactly what `make_params` accepts: `bandit-router policies` lists these, so every listed setting works.
    """
    entry = REGISTRY[name]
    return {f.name: f.default for f in dataclasses.fields(entry.params) if f.name not in entry.ignores}


def make_params(
    name: str, settings: Mapping[str, Any], text: Mapping[str, str] | None = None, folder: Path | None = None
) -> Any:
    """`name`'s params from typed `settings` (TOML, JSON, keyword arguments) over `text` settings (a spec's
    `key=value` strings, parsed); each checked against its declared type (`setting_values.typed_value`: 64.5 is
    not an integer). Files the `text` settings name by relative paths are read from `folder` (`in_folder`); the
    typed settings' from the working directory (resolve them first with `in_folder` to read them elsewhere)."""
    entry = REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(entry.params)}
    used = sorted(settings_of(name))
    given = {**(text or {}), **settings}
    unknown = set(given) - set(fields)
    if unknown:
        raise UnknownPolicy(f"policy {name!r} has no setting {quoted(sorted(unknown), used)}; it has {used}")
    ignored = set(given) & entry.ignores
    if ignored:
        raise UnknownPolicy(f"policy {name!r} does not use the setting {sorted(ignored)}; it uses {used}")
    values = dict(entry.preset)
    for key, value in given.items():
        try:
            values[key] = typed_value(type_name(fields[key].type), value, text=key not in settings)
        except ValueError as exc:
            raise UnknownPolicy(f"policy {name!r}: setting {key} {exc}") from None
    from_text = {k: v for k, v in values.items() if k in (text or {}) and k not in settings}
    try:
        return entry.params(**{**values, **in_folder(name, from_text, folder)})
    except (ValueError, TypeError) as exc:
        raise UnknownPolicy(f"policy {name!r}: {exc}") from exc


def policy_settings(policy: Policy) -> dict[str, Any] | None:
    """The settings `policy` was built with (its `params` dataclass), as a JSON tree: what a router snapshot records,
    so that it is not restored into the same policy with other settings. Settings that name a file to read
    (`Entry.files`) are left out (what was read is in the other settings, or in the learned state); None for a
    policy without a `params` dataclass (it is then known by its name only)."""
    params = getattr(policy, "params", None)
    if params is None or not dataclasses.is_dataclass(params) or isinstance(params, type):
        return None
    files: set[str] = set()
    for entry in REGISTRY.values():
        if entry.params is type(params):
            files |= entry.files
    tree = {f.name: _json_tree(getattr(params, f.name)) for f in dataclasses.fields(params) if f.name not in files}
    normalised: dict[str, Any] = json.loads(json.dumps(tree, sort_keys=True))  # tuples → lists, as a snapshot keeps
    return normalised


def setting_defaults(policy: Policy) -> dict[str, Any]:
    """Each setting of `policy`'s `params` dataclass that has a default, that default as `policy_settings` records
    it: what a snapshot taken before a setting existed (it does not record it) was taken with, when the setting was
    added with a default that keeps the earlier behaviour."""
    params = getattr(policy, "params", None)
    if params is None or not dataclasses.is_dataclass(params) or isinstance(params, type):
        return {}
    tree: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            tree[f.name] = _json_tree(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            tree[f.name] = _json_tree(f.default_factory())
    normalised: dict[str, Any] = json.loads(json.dumps(tree, sort_keys=True))
    return normalised


def _json_tree(value: Any) -> Any:
    """A setting's value as JSON: dataclasses (a rule) by their init fields, sequences as lists, other objects
    by their repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_tree(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = [_json_tree(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, frozenset | set) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def check_models(policy: Policy, models: Sequence[ModelSpec]) -> None:
    """`InvalidInput` when `policy` cannot work with the catalog `models` (its optional `check_models`: a
    `fixed:<model>`, or a `rules` policy's rule or default, whose model is not there or has `route = false`);
    what `Router` runs when it is built."""
    check = getattr(policy, "check_models", None)
    if check is not None:
        check(models)


def missing_models(policy: Policy, models: Sequence[ModelSpec]) -> list[str]:
    """What `policy` names that is not among the active `models` (retired at run time), one sentence each saying
    what the policy does instead (its optional `missing_models`); [] for a policy that names no model."""
    missing = getattr(policy, "missing_models", None)
    return list(missing(models)) if missing is not None else []


def make_policy(spec: str, *, folder: Path | None = None, **settings: Any) -> Policy:
    """A fresh policy from a spec string; keyword settings override those in the string. A file the spec names by a
    relative path (`rules:file=rules.toml`) is read from `folder` (None: the working directory)."""
    name, parsed = parse_spec(spec)
    params = make_params(name, settings, parsed, folder)
    policy = REGISTRY[name].factory(params, name=name)
    if name not in ("fixed",) and (parsed or settings):
        policy.name = spec if not settings else name
    return policy


__all__ = [
    "CONTEXTUAL",
    "CONTEXT_FREE",
    "REGISTRY",
    "BasePolicy",
    "Policy",
    "check_models",
    "in_folder",
    "make_params",
    "make_policy",
    "missing_models",
    "parse_settings",
    "parse_spec",
    "policy_settings",
    "setting_defaults",
    "settings_of",
    "warm_start",
]
