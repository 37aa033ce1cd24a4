"""JSON objects whose keys are given once: `json.loads(text, object_pairs_hook=once_each)`, or `keys_once(raw)`
before a body is parsed by another parser (pydantic's).

Python's `json` and pydantic's parser keep the last of a key given twice, silently (`{"avg_cost_usd": 0.001,
"avg_cost_usd": 0.002}` is `{"avg_cost_usd": 0.002}`; `{"decision_id": "a", …, "decision_id": "b"}` is feedback on
"b"); TOML refuses such a file. So the JSON that stands for a TOML table (a setting in the environment, the body of
`PUT /v1/budgets`) and every request body of the service and the gateway refuse it too, naming the key.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jiter

from .errors import InvalidInput

_DUPLICATE = "Detected duplicate key "
"""How jiter's `ValueError` for a key given twice begins."""
_JITER_DUPLICATE = re.compile(r'Detected duplicate key "(.*)" at line \d+ column \d+', re.DOTALL)
"""jiter's whole message: the key as Rust's `{:?}` writes a string, with `\\"`, `\\\\`, `\\n`, `\\u{301}`, … escapes."""
_RUST_ESCAPE = re.compile(r"\\(?:u\{([0-9a-fA-F]{1,6})\}|(.))", re.DOTALL)
_RUST_CHARACTER = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}


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


def keys_once(raw: bytes) -> None:
    """`DuplicateKey` when an object of the JSON text `raw` gives a key twice (anywhere in it, as written or through
    escapes: `"a"` and `"\\u0061"`). Anything else wrong with `raw` (not JSON, too deep, a lone surrogate escape) is
    left to the parser that reads it (which then must look for repeated keys itself). jiter's parser in Rust, the
    one pydantic's is built on; a body that repeats a key is read again by `json.loads` to name every repeated key
    of its first such object."""
    try:
        jiter.from_json(raw, catch_duplicate_keys=True, cache_mode="none")
    except ValueError as exc:
        if not str(exc).startswith(_DUPLICATE):
            return
        try:
            json.loads(raw, object_pairs_hook=once_each)
        except DuplicateKey:
            raise
        except (ValueError, RecursionError):
            pass
        key = _jiter_key(str(exc))  # a body `json.loads` cannot read (an integer of over 4,300 digits)
        raise DuplicateKey("gives a key twice" if key is None else f"gives the key {key!r} twice") from None


def _jiter_key(message: str) -> str | None:
    """The key jiter's "Detected duplicate key …" `message` names, its Rust escapes undone; None if not such."""
    found = _JITER_DUPLICATE.fullmatch(message)
    if found is None:
        return None
    return _RUST_ESCAPE.sub(
        lambda m: chr(int(m[1], 16)) if m[1] else _RUST_CHARACTER.get(m[2], m[2]), found[1])
