"""A setting's value checked against the type its params class declares: what policy specs, a policy's
`policy_settings` and a learned cascade's `escalation` table share.

Text (a spec's `key=value`) is parsed: `dim=64` is an integer, `dim=64.5` is not. A typed value (TOML, JSON, a
keyword argument) must already be of its type: a float is not an integer (64.5 is refused, never truncated to 64),
a bool is not a number, a number is not text, nan and infinities are not numbers (nan passes every range check
written as a comparison). A type other than int, float, bool and str is left to its params class to check.
"""

from __future__ import annotations

import math
from typing import Any

EXPECTED = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}
"""What each checked type is called in a message."""


def type_name(annotation: Any) -> str:
    """A dataclass field's type as a name (`from __future__ import annotations` keeps it a string)."""
    return annotation if isinstance(annotation, str) else str(getattr(annotation, "__name__", annotation))


def typed_value(kind: str, value: Any, *, text: bool = False) -> Any:
    """`value` as a setting of type `kind` ("int", "float", "bool", "str"; any other is returned as it is).
    `text`: the value is a spec's text, parsed; otherwise it must be of the type already (an int is a float).
    Raises ValueError("must be an integer, got 64.5")."""
    expected = EXPECTED.get(kind)
    if expected is None:
        return value
    problem = ValueError(f"must be {expected}, got {value!r}")
    if text and isinstance(value, str):
        word = value.strip()
        try:
            if kind == "int":
                return int(word)
            if kind == "float":
                number = float(word)
                if not math.isfinite(number):
                    raise ValueError
                return number
        except ValueError:
            raise problem from None
        if kind == "bool":
            if word.lower() not in ("true", "false", "1", "0"):
                raise problem
            return word.lower() in ("true", "1")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise problem
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise problem
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise problem
    if kind == "int" and not isinstance(value, int):
        raise problem
    if not math.isfinite(value):  # nan passes every range check written as a comparison
        raise problem
    return value  # a number: its range (finite, > 0, …) is its params class's to check
