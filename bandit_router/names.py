"""One grammar for every name that becomes a metrics label, a dictionary or database key, or part of a URL path:
model names, tenants, budget share selectors (model names and tag keys/values), context keys, catalog tags.

A name is valid when

- it is a string of 1 to `max_length` characters (128 unless the caller says otherwise);
- every character is printable and not whitespace: no control characters (C0, C1, DEL), no format characters,
  no lone surrogates (`"\\ud800"` from a JSON `\\ud800` escape: they cannot be encoded as UTF-8), no
  private-use or unassigned code points, no spaces or line separators, and no backslash;
- split at `/`, no segment is empty, `.` or `..`: provider ids such as `meta-llama/Llama-3.1-8B` are names,
  `../../etc/passwd`, `/abs`, `a//b` and `a/` are not.

Why one grammar: a name a client sent once ends up in Prometheus labels (which must encode as UTF-8), in the
URL of `DELETE /v1/models/{name}`, in stored JSON and in log lines; the first place that cannot hold it must
not be the first place that notices.

Examples:
    >>> check_name("meta-llama/Llama-3.1-8B", "model")
    'meta-llama/Llama-3.1-8B'
    >>> is_name("../../etc/passwd")
    False
    >>> is_name("\\ud800")
    False
"""

from __future__ import annotations

import unicodedata
from typing import Any

from .errors import InvalidInput

MAX_NAME_LENGTH = 128
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def name_problem(value: Any, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """Why `value` is not a name (a short phrase), or None when it is one."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"has {len(value)} characters; at most {max_length} are allowed"
    for ch in value:
        if ch == "\\" or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return (f"holds the character U+{ord(ch):04X}: a name has no spaces, no control, format or surrogate "
                    "characters and no `\\`")
    if "/" in value:
        for segment in value.split("/"):
            if segment in ("", ".", ".."):
                return "has an empty, `.` or `..` segment between `/`"
    elif value in (".", ".."):
        return "must not be `.` or `..`"
    return None


def is_name(value: Any, max_length: int = MAX_NAME_LENGTH) -> bool:
    """True when `value` follows the grammar."""
    return name_problem(value, max_length) is None


def check_name(value: Any, what: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """`value` when it is a name, else `InvalidInput` naming `what` and the problem."""
    problem = name_problem(value, max_length)
    if problem is not None:
        shown = safe_text(value)[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f'{what} "{shown}" {problem}')
    return str(value)


def safe_text(value: object) -> str:
    """`value` as text that always encodes as UTF-8 (lone surrogates and other unencodable code points become
    `\\udc80`-style escapes): for label export and log lines, which must never fail on a stored name."""
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
