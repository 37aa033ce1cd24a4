"""JSON read with only JSON's numbers: `finite_loads(text)` is `json.loads(text)` with `NaN`, `Infinity`,
`-Infinity` and a number too large for a float (`1e400`, which Python reads as infinity) read as null.

Python's `json` reads those and `json.dumps` writes them back as `NaN` and `Infinity`, which are not JSON: a strict
parser (JavaScript's `JSON.parse`) refuses the whole text. So what the gateway reads from an upstream (an answer,
a streamed chunk, an error body) and writes back to its caller is read with this, and every reply is JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_loads(text: str | bytes) -> Any:
    """`text` as `json.loads` reads it, a non-finite number as None; `ValueError` when it is not JSON,
    `RecursionError` when too deep (as `json.loads`)."""
    return json.loads(text, parse_constant=_no_number, parse_float=_finite_or_none)


def _no_number(constant: str) -> None:
    """`NaN`, `Infinity` and `-Infinity` (Python's json reads them; JSON does not have them) as null."""
    return None


def _finite_or_none(text: str) -> float | None:
    """A JSON number with a fraction or exponent as a float, null when too large for one (`1e400`)."""
    value = float(text)
    return value if math.isfinite(value) else None
