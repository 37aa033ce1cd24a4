"""Candidate specs: which policy, with which router settings, to evaluate on a log.

    CANDIDATE := "logged" | "shadow:" NAME | POLICY [ "@" SETTING ( "," SETTING )* ]
    SETTING   := "lambda=" λ | "cost_weight=" λ | "seed=" INT | "cold_start_rounds=" INT | "cold_start_floor=" P

POLICY is a registry spec (`bandit_router.policies`): `vw-squarecb`, `vw-squarecb:gamma_scale=50`,
`linucb:alpha=0.5`, `fixed:gpt-4o-mini`, `random`, … The part after `@` sets the candidate's `Router`:
`lambda` (alias `cost_weight`) replaces every request's λ when the candidate decides (not when its reward is
measured; see `evaluate_log`), `seed` its sampler, and the cold-start settings. Examples:

    vw-squarecb:gamma_scale=50            linucb:alpha=0.5@lambda=40        vw-greedy@lambda=0,seed=3
    fixed:gpt-4o-mini                     random                            logged      shadow:linucb

`logged` is the logging policy itself (its logged pmfs); `shadow:NAME` a shadow policy whose pmfs the
service logged next to each decision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, UnknownPolicy
from ..hints import quoted
from ..policies import make_policy, parse_spec
from ..policies.rules import RulesPolicy
from ..setting_values import typed_value

LOGGED = "logged"
SHADOW_PREFIX = "shadow:"
_SETTINGS = {"lambda", "cost_weight", "seed", "cold_start_rounds", "cold_start_floor"}


@dataclass(frozen=True)
class Candidate:
    """A parsed candidate spec. `kind` is `logged`, `shadow` or `policy`; `label` is the spec as written."""

    label: str
    kind: str
    policy: str = ""
    cost_weight: float | None = None
    seed: int | None = None
    cold_start_rounds: int = 20
    cold_start_floor: float = 0.1

    @property
    def shadow(self) -> str:
        """The shadow policy's name (for kind `shadow`)."""
        return self.policy


def parse_candidate(spec: str) -> Candidate:
    """Parse a candidate spec (see the module docstring); raises `InvalidInput` naming what is wrong."""
    label = spec.strip()
    if not label:
        raise InvalidInput("empty candidate spec")
    if label == LOGGED:
        return Candidate(label, "logged")
    if label.startswith(SHADOW_PREFIX):
        name = label[len(SHADOW_PREFIX) :].strip()
        if not name or "@" in name:
            raise InvalidInput(f"candidate {label!r}: expected shadow:NAME")
        return Candidate(label, "shadow", policy=name)
    policy, at, rest = label.partition("@")
    policy = policy.strip()
    if policy == LOGGED or policy.startswith(SHADOW_PREFIX):
        raise InvalidInput(f"candidate {label!r}: logged and shadow pmfs take no @settings")
    try:
        parse_spec(policy)
        make_policy(policy)
    except UnknownPolicy as exc:
        raise InvalidInput(f"candidate {label!r}: {exc}") from None
    values: dict[str, str] = {}
    if at:
        for part in rest.split(","):
            key, eq, value = (s.strip() for s in part.partition("="))
            if not eq or not key or not value:
                raise InvalidInput(f"candidate {label!r}: bad setting {part.strip()!r}, expected key=value")
            if key not in _SETTINGS:
                known = ", ".join(sorted(_SETTINGS))
                raise InvalidInput(f"candidate {label!r}: unknown setting {quoted([key], _SETTINGS)}; known: {known}")
            key = "cost_weight" if key == "lambda" else key
            if key in values:
                raise InvalidInput(f"candidate {label!r}: {key} given twice")
            values[key] = value
    def typed(key: str, kind: str, default: str | None) -> Any:
        value = values.get(key, default)
        try:
            return None if value is None else typed_value(kind, value, text=True)
        except ValueError as exc:
            shown = "lambda" if key == "cost_weight" else key
            raise InvalidInput(f"candidate {label!r}: {shown} {exc}") from None

    cost_weight: float | None = typed("cost_weight", "float", None)
    seed: int | None = typed("seed", "int", None)
    rounds: int = typed("cold_start_rounds", "int", "20")
    floor: float = typed("cold_start_floor", "float", "0.1")
    if cost_weight is not None and not (math.isfinite(cost_weight) and cost_weight >= 0):
        raise InvalidInput(f"candidate {label!r}: lambda must be a finite number >= 0")
    if seed is not None and seed < 0:  # numpy's generators take no negative seed
        raise InvalidInput(f"candidate {label!r}: seed must be >= 0")
    if rounds < 0 or not 0.0 <= floor <= 0.5:
        raise InvalidInput(f"candidate {label!r}: cold_start_rounds must be >= 0 and cold_start_floor in [0, 0.5]")
    return Candidate(label, "policy", policy, cost_weight, seed, rounds, floor)


def check_models(candidates: Iterable[Candidate], models: Sequence[str]) -> None:
    """A `fixed:<model>` candidate must name a model of the log: the policy would otherwise send every request to
    the cheapest model and be reported under the name it was given (a typo evaluated as another model)."""
    for c in candidates:
        if c.kind != "policy":
            continue
        name, settings = parse_spec(c.policy)
        if name == "fixed" and settings.get("model") not in models:
            raise InvalidInput(f"candidate {c.label!r}: {settings.get('model')!r} is not a model of the log; "
                               f"its models: {', '.join(models)}")


def text_rule_warnings(candidates: Iterable[Candidate], without_text: int, total: int) -> list[str]:
    """A warning per `rules` candidate with rules that read the request's text (`regex`) when `without_text` of the
    `total` logged contexts have none: a service log keeps their lengths, markers and context values, not the text
    (not even with `store_prompts`), so there such a rule never matches and the candidate is estimated as if it had
    not that rule."""
    if not without_text:
        return []
    warnings = []
    on = "" if without_text == total else f" on the {without_text} of the {total} decisions without it"
    for c in candidates:
        if c.kind != "policy" or parse_spec(c.policy)[0] != "rules":
            continue
        policy = make_policy(c.policy)
        text_rules = policy.text_rules() if isinstance(policy, RulesPolicy) else []
        if text_rules:
            warnings.append(f"candidate {c.label!r}: {'; '.join(text_rules)}: a regex never matches a logged context "
                            f"without the request's text (a service log keeps none), so the estimate is{on} of the "
                            f"policy without {'that rule' if len(text_rules) == 1 else 'those rules'}")
    return warnings


def baseline_candidates(models: Iterable[str]) -> list[str]:
    """The reference points every evaluation reports: the logged policy, uniform random, each fixed model."""
    return [LOGGED, "random", *(f"fixed:{m}" for m in models)]
