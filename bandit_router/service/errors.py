"""Every error → HTTP, in one place. Each error body is JSON: `{"error": code, "message": text, "field": name}`.

| error                                            | status | code                  |
|--------------------------------------------------|--------|-----------------------|
| request validation (pydantic), `InvalidField`    | 422    | invalid_input         |
| `UnknownModel` (field `models`)                  | 422    | unknown_model         |
| other `InvalidInput`                             | 422    | invalid_input         |
| `PayloadTooLarge`                                | 413    | payload_too_large     |
| `UnsupportedMediaType`                           | 415    | unsupported_media_type|
| `Host` not served (middleware, `app.py`)         | 421    | misdirected_request   |
| `UnknownDecision`, `NotFound`, unknown path      | 404    | not_found             |
| `ConflictingFeedback`, `Conflict`                | 409    | conflict              |
| `Unauthorized`                                   | 401    | unauthorized          |
| `Forbidden`                                      | 403    | forbidden             |
| `Gone` (a stored decision that cannot be read)   | 410    | gone                  |
| `Unavailable`, `StoreError`, `sqlite3.Error`     | 503    | unavailable           |
| anything else                                    | 500    | internal (logged)     |
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import BanditRouterError, ConflictingFeedback, InvalidInput, UnknownDecision, UnknownModel
from ..hints import did_you_mean
from ..store import StoreError
from .exceptions import (
    Conflict,
    Forbidden,
    Gone,
    InvalidBody,
    InvalidField,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from .schemas import BODY_MODELS, PATTERN_WORDS, known_fields

log = logging.getLogger("bandit_router.service")

_MAPPING: tuple[tuple[type[BaseException], int, str], ...] = (
    (UnknownModel, 422, "unknown_model"),
    (InvalidInput, 422, "invalid_input"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (UnknownDecision, 404, "not_found"),
    (NotFound, 404, "not_found"),
    (ConflictingFeedback, 409, "conflict"),
    (Conflict, 409, "conflict"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (Gone, 410, "gone"),
    (Unavailable, 503, "unavailable"),
    (StoreError, 503, "unavailable"),
    (sqlite3.Error, 503, "unavailable"),  # a read that met a locked, full or corrupt database
)
_HEADERS: Mapping[int, Mapping[str, str]] = {401: {"www-authenticate": "Bearer"}, 503: {"retry-after": "1"}}
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

# OpenAPI: the error replies every /v1 route may give.
_ERROR_SCHEMA = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": _ERROR_SCHEMA}
    for status, text in (
        (401, "missing or wrong API key"),
        (413, "body or prompt too large"),
        (415, "the body is not sent as application/json"),
        (422, "invalid input; `field` names the field"),
        (503, "starting, recovering or database unavailable"),
    )
}


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # built once: json.dumps(…, **options) is slow


def encode_json(payload: Any) -> bytes:
    """Compact JSON, no NaN or infinities."""
    return _ENCODER.encode(payload).encode("utf-8")


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(encode_json(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    payload: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        payload["field"] = field
    return json_response(payload, status, _HEADERS.get(status))


def status_of(exc: BaseException) -> tuple[int, str]:
    for kind, status, code in _MAPPING:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def field_path(loc: Sequence[Any], located: bool = False) -> str:
    """A pydantic error location as a field path: ("messages", 0, "content") → "messages[0].content". A `located`
    one (FastAPI's `RequestValidationError`) starts with where the value was read, which is dropped: ("body",
    "decision_id") → "decision_id", and a query or path parameter by its name, ("query", "limit") → "limit", as the
    routes' own checks name it. A body model validated directly has no location: ("path",) is its field `path`."""
    out = ""
    for part in _field_parts(loc, located):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _field_parts(loc: Sequence[Any], located: bool) -> list[Any]:
    parts = list(loc)
    return parts[1:] if located and parts and parts[0] in ("body", "query", "path") else parts


def validation_error(
    errors: Sequence[Mapping[str, Any]], body: type[BaseModel] | None = None, located: bool = False
) -> Response:
    """A 422 for pydantic errors (`located`: FastAPI's, whose locations start with body, query or path): the first
    error's field and every error's message; an unknown field of the request body `body` gets
    ` (did you mean latency_ms?)` when a known field is close to it."""
    first = field_path(error_loc(errors[0]), located) if errors else "body"
    messages = [f"{field_path(error_loc(e), located)}: {said(e)}{_hint(e, body, located)}"
                for e in errors[:SHOWN_ERRORS]]
    return error_response(422, "invalid_input", "; ".join(messages), first)


def said(error: Mapping[str, Any]) -> str:
    """The error's message, without the "Value error, " pydantic puts before a validator's own words; for text
    that is not Unicode (a lone surrogate, which JSON's `\\ud800` escape can send) what is wrong and where (how many
    code points come before it: a JavaScript client counts UTF-16 units), where pydantic says "unable to parse raw
    data as a unicode string"; for a name or an id that does not match its pattern, the pattern in words."""
    if error.get("type") == "string_unicode":
        text = error.get("input")
        where = ""
        if isinstance(text, str):
            at, char = next(((i, c) for i, c in enumerate(text) if _is_surrogate(c)), (None, ""))
            if at is not None:
                where = f" ({escape_surrogates(char)} after {at} code point{'' if at == 1 else 's'})"
        return (f"not Unicode text: it holds a lone surrogate{where}, half of a UTF-16 pair (a JSON escape "
                "\\ud800-\\udfff) without its other half; send the character itself, or both halves of its pair")
    if error.get("type") == "string_pattern_mismatch":
        words = PATTERN_WORDS.get(str((error.get("ctx") or {}).get("pattern")))
        if words is not None:
            return words
    loc = error.get("loc") or ()
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if tuple(loc[-2:]) in UNIX_TIME_FIELDS:
        if error.get("type") == "float_parsing":
            return not_unix_seconds(error.get("input"))
        if error.get("type") == "less_than_equal":
            return message + milliseconds_hint(error.get("input"))
    return message


UNIX_TIME_FIELDS = {("query", "since"), ("query", "until")}
"""Parameters that take a Unix time in seconds (`/v1/stats/timeseries`): a date given there is answered with the
number it stands for."""


def not_unix_seconds(text: Any) -> str:
    """What is wrong with `text` where a Unix time in seconds is asked: for an ISO 8601 date with its offset (or
    `Z`), the number to send instead; for one without, that number as if it were UTC (its zone is not known)."""
    try:
        moment = datetime.datetime.fromisoformat(str(text).strip())
    except ValueError:
        return "not a number: a Unix time in seconds is asked (e.g. 1764288000 for 2025-11-28T00:00:00Z)"
    if moment.tzinfo is None:
        utc = moment.replace(tzinfo=datetime.UTC).timestamp()
        return (f"a Unix time in seconds is asked, not a date; {str(text).strip()[:40]!r} gives no offset "
                f"(if it is UTC: {utc:.0f})")
    return f"a Unix time in seconds is asked, not a date: {str(text).strip()[:40]!r} is {moment.timestamp():.0f}"


def milliseconds_hint(text: Any) -> str:
    """For a Unix time past the largest accepted whose thousandth is not (`Date.now()` is in milliseconds): the
    seconds it likely means."""
    try:
        seconds = float(str(text)) / 1000
    except ValueError:
        return ""
    return f" (Unix seconds: {text!s:.40} looks like milliseconds, {seconds:.0f} s)" if seconds <= 1e11 else ""


def _is_surrogate(char: str) -> bool:
    return 0xD800 <= ord(char) <= 0xDFFF


def escape_surrogates(text: str) -> str:
    """`text` with each surrogate written as its JSON escape (`\\ud800`): printable, and what the client sent."""
    return "".join(f"\\u{ord(c):04x}" if _is_surrogate(c) else c for c in text)


def error_loc(error: Mapping[str, Any]) -> Sequence[Any]:
    """The error's location with its keys as sent, each surrogate written as its JSON escape: pydantic writes a
    key's bytes there, a surrogate's as three U+FFFD; `with_text` puts the keys it found back, and a mapping's key
    that is not Unicode is its input."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") != "string_unicode":
        return loc
    text = error.get("input")
    if len(loc) >= 2 and loc[-1] == "[key]" and isinstance(text, str):
        loc = (*loc[:-2], text, "[key]")
    return tuple(escape_surrogates(part) if isinstance(part, str) else part for part in loc)


KeyPath = tuple[Any, ...]
"""A location in a parsed body with its keys as sent (`_find`)."""


def with_text(error: Mapping[str, Any], body: Any, taken: set[KeyPath] | None = None) -> Mapping[str, Any]:
    """A `string_unicode` error located in the parsed `body` with its keys as sent (pydantic writes each key's bytes,
    a surrogate's as three U+FFFD) and its text read from there (`first_errors` leaves out the inputs), and one
    pydantic reports at an object whose key is not Unicode (a model's: `messages[0]`, or the body) located at that
    key, as a mapping's key is (`messages[0].ro\\ud800le.[key]`). Other errors, or a place not found in `body`, are
    `error` itself. Every key of the location is matched exactly (`_find`): the keys written as `loc` writes them
    are tried in turn until one leads to the error's own text when pydantic gave it, else to a text or key holding
    a surrogate that no earlier error of the same body took (`taken`, shared by those errors): two keys written
    alike (`a\\ud800`, `a\\udbff`) are told apart at any depth, and a key that holds U+FFFD itself is named only
    where the error is."""
    if error.get("type") != "string_unicode":
        return error
    loc = tuple(error.get("loc", ()))
    text = error.get("input")
    taken = set() if taken is None else taken
    is_key = len(loc) >= 2 and loc[-1] == "[key]"
    written = loc[-2] if is_key else None  # a mapping's key: how pydantic wrote it

    def key_in(path: KeyPath, node: dict[Any, Any]) -> str | None:
        """The key of mapping `node` the error names (a mapping's key, or an object's that pydantic reports)."""
        if isinstance(text, str):
            return text if text in node and (*path, text, "[key]") not in taken else None
        return next((k for k in node if isinstance(k, str) and any(map(_is_surrogate, k))
                     and (written is None or _lossy(k) == written) and (*path, k, "[key]") not in taken), None)

    def fits(path: KeyPath, node: Any) -> bool:
        if isinstance(node, dict):
            return key_in(path, node) is not None
        if is_key or not isinstance(node, str) or path in taken:
            return False
        return node == text if isinstance(text, str) else any(map(_is_surrogate, node))

    found = _find(body, loc[:-2] if is_key else loc, fits)
    if found is None:
        return error
    path, node = found
    if isinstance(node, str):
        taken.add(path)
        return {**error, "loc": path, "input": node}
    key = key_in(path, node)
    taken.add((*path, key, "[key]"))
    return {**error, "loc": (*path, key, "[key]"), "input": key}


def _find(body: Any, loc: Sequence[Any], fits: Callable[[KeyPath, Any], bool]) -> tuple[KeyPath, Any] | None:
    """The first place at pydantic location `loc` in `body` (depth first, in the body's order) whose value `fits`:
    (its location with the keys as sent, the value), or None. A part pydantic wrote lossily (U+FFFD) may be any key
    written so: each is tried in turn, as deep as `loc` goes; a part that is no key or index (a union member's tag,
    `list[str]`) is skipped (kept in the location)."""
    stack: list[tuple[KeyPath, Any, int]] = [((), body, 0)]
    while stack:
        path, node, depth = stack.pop()
        if depth == len(loc):
            if fits(path, node):
                return path, node
            continue
        part = loc[depth]
        keys = _keys_written(node, part) if isinstance(node, dict) else []
        if keys:
            stack.extend(((*path, key), node[key], depth + 1) for key in reversed(keys))
        elif isinstance(node, list) and isinstance(part, int):
            if 0 <= part < len(node):
                stack.append(((*path, part), node[part], depth + 1))
        else:
            stack.append(((*path, part), node, depth + 1))
    return None


def _keys_written(mapping: dict[Any, Any], part: Any) -> list[str]:
    """The keys of `mapping` pydantic writes as `part` in a location, in order: the key itself; for a part holding
    U+FFFD, every key whose surrogates it wrote as three U+FFFD each, and one that holds U+FFFD itself."""
    if not isinstance(part, str):
        return []
    if "\ufffd" not in part:
        return [part] if part in mapping else []
    return [k for k in mapping if isinstance(k, str) and _lossy(k) == part]


def _lossy(text: str) -> str:
    """`text` as pydantic writes a key in a location: its UTF-8 bytes, a surrogate's three as three U+FFFD."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _hint(error: Mapping[str, Any], body: type[BaseModel] | None, located: bool) -> str:
    loc = _field_parts(error.get("loc", ()), located)
    if body is None or error.get("type") != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return ""
    return did_you_mean(loc[-1], known_fields(body, loc))


SHOWN_ERRORS = 5
"""A 422 names this many of a body's validation errors."""


def first_errors(exc: ValidationError, n: int = SHOWN_ERRORS, body: Any = None) -> list[Mapping[str, Any]]:
    """The first `n` of `exc`'s errors (without their inputs when there are more), those of text that is not
    Unicode read back from `body`, the parsed JSON `exc` came from (`with_text`). `exc.errors()` builds a dict for
    every one: a 1 MB body of 95,000 unknown keys took 0.5-0.8 s of the event loop for it, twice; pydantic writes
    them all as JSON in a fraction of that, and only its first `n` objects are decoded (with the inputs it would
    fail: JSON cannot hold a lone surrogate)."""
    if exc.error_count() <= n:
        shared: set[KeyPath] = set()
        return [with_text(error, body, shared) for error in exc.errors(include_url=False)]
    text = exc.json(include_url=False, include_input=False, include_context=False)
    decoder, at = json.JSONDecoder(), 1  # after the list's "["
    out: list[Mapping[str, Any]] = []
    taken: set[KeyPath] = set()
    while len(out) < n:
        while text[at] in ", \n":
            at += 1
        item, at = decoder.raw_decode(text, at)
        out.append(with_text(item, body, taken))
    return out


def to_response(exc: BaseException) -> Response:
    if isinstance(exc, InvalidBody):
        return validation_error(first_errors(exc.error, body=exc.body), BODY_MODELS.get(exc.error.title))
    if isinstance(exc, ValidationError):
        return validation_error(first_errors(exc), BODY_MODELS.get(exc.title))
    status, code = status_of(exc)
    if status == 500:
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal", "internal error")
    field = exc.field if isinstance(exc, InvalidField) else ("models" if isinstance(exc, UnknownModel) else None)
    return error_response(status, code, str(exc), field)


def http_code(status: int) -> str:
    """The code of a routing error's reply (an unknown path 404, a method a path does not take 405, …)."""
    return _HTTP_CODES.get(status, "error")


def http_error(exc: StarletteHTTPException) -> Response:
    """A routing error (Starlette's `HTTPException`: unknown path, method not allowed) in the service's shape,
    with its headers (a 405's `Allow`)."""
    response = error_response(exc.status_code, http_code(exc.status_code), str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    async def on_core(request: Request, exc: Exception) -> Response:
        return to_response(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_error(list(exc.errors()), located=True)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return to_response(exc)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # the client left while sending its body: nobody reads this reply

    app.add_exception_handler(BanditRouterError, on_core)
    app.add_exception_handler(ValidationError, on_core)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
