"""The rule-based strategy: ordered rules on length, regexes, markers and context values → model.

The first rule whose conditions all hold, and whose model is allowed, decides; else `default` (or the
cheapest allowed model). Every rule's model and the default must be routable models of the catalog
(`check_models`); a rule whose model a request does not allow, or that was retired at run time, is skipped,
and so is a default. In a TOML file (`rules:file=rules.toml`; written in a configuration file, a relative path
is read from that file's folder, elsewhere from the working directory) or, with `policy = "rules"`, the config's
`[policy_settings]` table (`[[policy_settings.rules]]`)::

    default = "gpt-4o-mini"
    [[rules]]
    model = "gpt-4o"
    markers = ["code", "math"]      # any of these markers
    [[rules]]
    model = "claude-sonnet-4-5"
    min_tokens = 2000               # also max_tokens, min_chars, max_chars
    [[rules]]
    model = "gpt-4.1-nano"
    regex = "(?im)^translate"       # searched in the request's text (see below)
    context = { task = "support" }  # every key equal to the request's context value, of the same type

A file holds only `default` and `[[rules]]` (anything else is refused). The conditions read the request's whole
text, the prompt or every message's content (a system message too) joined by "\n": `regex` is searched in it
(`re.search`, no flags but the pattern's own: `(?m)^` for the start of any line), `min_tokens`…`max_chars`
measure it (estimated tokens, characters), `markers` are those the features found in it (`features.MARKERS`;
another name is refused); `context` values compare with their type (`true` is not `1`, `1` is `1.0`).
With no rules at all, the built-in rule set is: code or maths, or ≥ 1,500 estimated tokens → the cheapest
model tagged `tier = "large"` among those the request allows; everything else (and all of it when the request
allows no large model) → `default` if set and allowed, else the cheapest allowed model.

Offline (`evaluate`), the logged contexts keep the lengths, markers and context values, not the text: a `regex`
never matches there (`text_rules` names such rules, and evaluate warns).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import ModelSpec
from ..errors import ConfigError
from ..features import MARKERS
from ..hints import quoted
from ..setting_values import typed_value
from ..tomlfile import TOMLFileError, load_toml_file
from ..types import Context, Scalar
from .base import BasePolicy, check_named_model
from .baselines import cheapest

LONG_PROMPT_TOKENS = 1500


@dataclass(frozen=True)
class Rule:
    model: str
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    regex: str | None = None
    markers: tuple[str, ...] = ()
    context: Mapping[str, Scalar] = field(default_factory=dict)
    pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"rule for {self.model!r}"
        kinds = {"model": "str", "min_chars": "int", "max_chars": "int", "min_tokens": "int", "max_tokens": "int",
                 "regex": "str"}
        for name, kind in kinds.items():  # of the wrong type, a rule fails at the first request it is tried on
            value = getattr(self, name)
            if value is not None:
                try:
                    typed_value(kind, value)
                except ValueError as exc:
                    raise ConfigError(f"{where}: {name} {exc}") from None
        if isinstance(self.markers, str) or not all(isinstance(m, str) for m in self.markers):
            raise ConfigError(f"{where}: markers must be a list of strings, got {self.markers!r}")
        unknown = [m for m in self.markers if m not in MARKERS]
        if unknown:  # a misspelt marker would never match, without a word
            raise ConfigError(f"{where}: unknown marker{'s' if len(unknown) > 1 else ''} {quoted(unknown, MARKERS)}; "
                              f"the markers are {', '.join(MARKERS)}")
        if not isinstance(self.context, Mapping) or not all(
            isinstance(v, str | int | float | bool) for v in self.context.values()
        ):
            raise ConfigError(f"{where}: context must be a table of strings, numbers or booleans, got {self.context!r}")
        if self.regex is not None:
            try:
                object.__setattr__(self, "pattern", re.compile(self.regex))
            except re.error as exc:
                raise ConfigError(f"rule for {self.model!r}: bad regex {self.regex!r}: {exc}") from exc
        object.__setattr__(self, "markers", tuple(self.markers))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Rule:
        known = {f for f in cls.__dataclass_fields__} - {"pattern"}
        unknown = set(data) - known
        if unknown or "model" not in data:
            hint = f"; unknown: {quoted(sorted(unknown), known)}" if unknown else ""
            raise ConfigError(f"a rule needs `model` and may have {sorted(known - {'model'})}; got {sorted(data)}"
                              f"{hint}")
        return cls(**dict(data))

    def conditions(self) -> str:
        """The rule's conditions as written (`min_tokens = 2000, markers = ['code']`), to name it in a message."""
        shown = [f"{name} = {getattr(self, name)!r}" for name in ("min_chars", "max_chars", "min_tokens",
                                                                  "max_tokens", "regex")
                 if getattr(self, name) is not None]
        if self.markers:
            shown.append(f"markers = {list(self.markers)!r}")
        if self.context:
            shown.append(f"context = {dict(self.context)!r}")
        return ", ".join(shown) or "no conditions"

    def matches(self, context: Context) -> bool:
        if self.min_chars is not None and context.n_chars < self.min_chars:
            return False
        if self.max_chars is not None and context.n_chars > self.max_chars:
            return False
        if self.min_tokens is not None and context.input_tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and context.input_tokens > self.max_tokens:
            return False
        if self.markers and not (set(self.markers) & context.markers):
            return False
        if not all(_same_value(context.attributes.get(k), v) for k, v in self.context.items()):
            return False
        return self.pattern is None or self.pattern.search(context.text) is not None


def _same_value(given: Scalar | None, wanted: Scalar) -> bool:
    """`given == wanted` with the type: a boolean equals only a boolean (Python's `True == 1`; the features keep
    them apart), a number any equal number (JSON does not tell 1 from 1.0)."""
    return isinstance(given, bool) is isinstance(wanted, bool) and given == wanted


@dataclass(frozen=True)
class RulesParams:
    rules: tuple[Rule, ...] = ()
    default: str = ""
    file: str = ""

    def __post_init__(self) -> None:
        rules = _rule_list(self.rules, "")
        default = self.default
        if self.file:
            where = f"rules file {self.file}: "
            try:
                data = load_toml_file(Path(self.file))
            except OSError as exc:
                raise ConfigError(f"{where}{exc.strerror or exc}") from exc
            except TOMLFileError as exc:
                raise ConfigError(f"{where}{exc}") from exc
            unknown = sorted(set(data) - set(FILE_KEYS))  # a misspelt `[[rule]]` left the built-in rules in force
            if unknown:
                settings_form = ("; this is the settings file's form: write [policy_settings]'s default and "
                                 "[[policy_settings.rules]] as default and [[rules]] at the top level"
                                 if "policy_settings" in data else "")
                raise ConfigError(f"{where}unknown keys {quoted(unknown, FILE_KEYS)}; a rules file holds `default = "
                                  f"\"<model>\"` and [[rules]] tables{settings_form}")
            if not isinstance(data.get("default", ""), str):
                raise ConfigError(f"{where}default must be a model name (a string), got {data['default']!r}")
            rules += _rule_list(data.get("rules", []), where)
            default = default or data.get("default", "")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "default", default)


FILE_KEYS = ("default", "rules")
"""The keys of a rules file (`rules:file=…`)."""


def _rule_list(value: Any, where: str) -> tuple[Rule, ...]:
    """`rules` as written (a list of tables, or of `Rule`s) → the rules. Anything else is a `ConfigError` saying what
    it is: one table (`[rules]` for `[[rules]]`) or a string was read entry by entry, a table's keys and a string's
    letters as rules."""
    if isinstance(value, Mapping):
        raise ConfigError(f"{where}rules must be a list of tables, one per rule ([[rules]] in TOML, not [rules]), "
                          f"got one table: {dict(value)!r}")
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where}rules must be a list of tables ([[rules]] in TOML), got {value!r}")
    for rule in value:
        if not isinstance(rule, Rule | Mapping):
            raise ConfigError(f"{where}each rule must be a table ([[rules]] with model = \"<model>\"), got {rule!r}")
    try:
        return tuple(r if isinstance(r, Rule) else Rule.from_mapping(r) for r in value)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def builtin_rules(models: Sequence[ModelSpec]) -> tuple[Rule, ...]:
    large = [m for m in models if m.tier == "large"]
    if not large:
        return ()
    strong = large[cheapest(large)].name
    return (Rule(model=strong, markers=("code", "math")), Rule(model=strong, min_tokens=LONG_PROMPT_TOKENS))


class RulesPolicy(BasePolicy):
    """First matching rule wins; deterministic (pmf is one-hot)."""

    Params = RulesParams

    def __init__(self, params: RulesParams | None = None, *, name: str = "rules") -> None:
        self.params = params or RulesParams()
        self.name = "rules"

    def check_models(self, models: Sequence[ModelSpec]) -> None:
        """Every rule's model and the default name a routable model of `models`: a misspelt one would never route
        (its rule skipped, or the cheapest model instead of the default) without a word."""
        for number, rule in enumerate(self.params.rules, 1):
            check_named_model(f"policy {self.name!r}: rule {number} ({rule.conditions()})", rule.model, models)
        if self.params.default:
            check_named_model(f"policy {self.name!r}: default", self.params.default, models)

    def text_rules(self) -> list[str]:
        """The rules that read the request's text itself (`regex`), numbered and with their conditions: offline,
        on logged contexts (no text), they never match."""
        return [f"rule {number} ({rule.conditions()})" for number, rule in enumerate(self.params.rules, 1)
                if rule.regex is not None]

    def missing_models(self, models: Sequence[ModelSpec]) -> list[str]:
        names = {m.name for m in models}
        missing = [f"rule {number} ({rule.conditions()}): {rule.model!r} is not an active model, so the rule is "
                   "skipped (a later rule, the default or the cheapest allowed model decides)"
                   for number, rule in enumerate(self.params.rules, 1) if rule.model not in names]
        if self.params.default and self.params.default not in names:
            missing.append(f"default: {self.params.default!r} is not an active model, so a request that no rule "
                           "decides gets the cheapest allowed model")
        return missing

    def choose(self, context: Context, models: Sequence[ModelSpec]) -> int:
        names = [m.name for m in models]
        rules = self.params.rules or builtin_rules(models)
        for rule in rules:
            if rule.model in names and rule.matches(context):
                return names.index(rule.model)
        if self.params.default in names:
            return names.index(self.params.default)
        return cheapest(models)

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        out = np.zeros(len(models))
        out[self.choose(context, models)] = 1.0
        return out
