"""JSON objects whose keys are given once: `json.loads(text, object_pairs_hook=once_each)`.

Python's `json` keeps the last of a key given twice, silently (`{"avg_cost_usd": 0.001, "avg_cost_usd": 0.002}`
is `{"avg_cost_usd": 0.002}`); TOML refuses such a file. So the JSON that stands for a TOML table (a setting in the
environment, the body of `PUT /v1/budgets`) refuses it too, naming the key.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput


class DuplicateKey(InvalidInput):
    """A JSON object gives a key twice."""


def once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`; `DuplicateKey` ("gives the key 'x' twice") when a key comes more than once.
    One pass over the pairs (a set of the keys seen), so a body of n keys costs O(n), repeated or not."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice: set[str] = set()
        for key, _ in pairs:
            (twice if key in seen else seen).add(key)
        raise DuplicateKey(f"gives the key {', '.join(map(repr, sorted(twice)))} twice")
    return out
