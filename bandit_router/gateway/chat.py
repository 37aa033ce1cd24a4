"""An OpenAI chat-completion request as the gateway reads it: the body to forward, and the routing knobs.

`model` is the router alias (`router` by default: "route it") or a catalog model's name ("send it there"). The
knobs ride in the body's extension field (what the OpenAI client sends with `extra_body`)::

    {"model": "router", "messages": [...], "bandit_router": {"cost_weight": 40, "models": ["a", "b"],
     "context": {"tenant": "acme"}}}

or in headers (`extra_headers`): `x-bandit-router-cost-weight: 40`, `x-bandit-router-models: a,b`,
`x-bandit-router-context: {"tenant": "acme"}` (JSON; a key given twice is refused, as in the body). A knob in the
body wins over the same knob in a header. The knobs are checked by the same rules as `/v1/route`'s fields
(`service/schemas.py`: `CostWeight`, `AllowedModels`, `Context`). Everything else in the body (temperature, tools,
max_tokens, …) goes to the upstream unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..errors import InvalidInput
from ..hints import did_you_mean
from ..jsonkeys import DuplicateKey, once_each
from ..service.errors import error_loc, field_path, said, with_text
from ..service.schemas import AllowedModels, Context, CostWeight
from ..types import Message, Request
from .pricing import message_text

EXTENSION = "bandit_router"
HEADER_PREFIX = "x-bandit-router-"
KNOBS = ("cost_weight", "models", "context")
KNOB_RULES: dict[str, TypeAdapter[Any]] = {
    "cost_weight": TypeAdapter(CostWeight), "models": TypeAdapter(AllowedModels), "context": TypeAdapter(Context)
}


MAX_JSON_DEPTH = 100
"""The deepest nesting of objects and arrays a body may have. Python's JSON parser reads about 950 levels, but the
encoder that writes the body for an upstream runs deeper in the call stack and gave up earlier (a 500, after the
decision was stored); no chat request needs more than a few dozen (a tool's schema)."""


def json_problem(value: Any, limit: int = MAX_JSON_DEPTH, *, depth: int = 1) -> str | None:
    """Why `value` (parsed JSON, at nesting level `depth` of its document) cannot be forwarded as JSON: nested deeper
    than `limit` levels, or a NaN or infinite number (Python reads `NaN`, `Infinity` and `1e999`; the JSON an
    upstream reads has none). None when it can."""
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return f"nested deeper than {limit} levels (the body's own object is the first)"
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, dict | list | float):
                    stack.append((child, depth + 1))
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{item} is not a JSON number (finite numbers only)"
    return None


class BadChatRequest(InvalidInput):
    """A chat-completion body the gateway cannot forward; `field` names the offending field (OpenAI's `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PromptTooLarge(InvalidInput):
    """The messages are longer than `max_prompt_chars`."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A parsed chat-completion request."""

    model: str
    routed: bool
    stream: bool
    include_usage: bool
    """Whether the caller asked for usage in the stream (the gateway always asks the upstream for it)."""
    messages: tuple[Mapping[str, Any], ...]
    payload: dict[str, Any]
    """The body to send upstream (without the extension field; `model` is set per upstream)."""
    cost_weight: float | None
    models: tuple[str, ...] | None
    context: dict[str, str | int | float | bool]
    models_param: str = f"{EXTENSION}.models"
    """Where `models` came from (`bandit_router.models` or the header `x-bandit-router-models`): the `param` of a
    400 about it."""

    def core_request(self) -> Request:
        """The router's `Request` for these messages and knobs. A message without content (`null` or absent: an
        assistant's that only calls tools) is left out of it, as it has no text (it added an empty line to the text
        the features read); one whose content is empty text is read as it is. When no message has content, the
        request is the first message with empty text."""
        messages = tuple(Message(str(m["role"]), message_text(m.get("content"))) for m in self.messages
                         if m.get("content") is not None)
        if not messages:
            messages = (Message(str(self.messages[0]["role"]), ""),)
        return Request(messages=messages, context=self.context, models=self.models, cost_weight=self.cost_weight)

    def upstream_payload(self) -> dict[str, Any]:
        """The body for an upstream; a stream asks for usage (`stream_options.include_usage`)."""
        if not self.stream:
            return self.payload
        payload = dict(self.payload)
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return payload


def parse_chat(body: Any, headers: Mapping[str, str], *, alias: str, max_prompt_chars: int) -> ChatRequest:
    """Validate `body` (parsed JSON) and the knob headers (as text, `knob_headers`); raises `BadChatRequest` or
    `PromptTooLarge`."""
    if not isinstance(body, dict):
        raise BadChatRequest("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadChatRequest("model", f"must be a model name or {alias!r} (route it)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadChatRequest("messages", "must be a non-empty list of messages")
    size = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadChatRequest(f"messages[{i}]", "must be an object")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise BadChatRequest(f"messages[{i}].role", "must be a non-empty string")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadChatRequest(f"messages[{i}].content", "must be a string, a list of content parts, or null")
        size += len(message_text(content))
    if size > max_prompt_chars:
        raise PromptTooLarge(f"the messages have {size} characters; the limit is {max_prompt_chars} "
                             "(max_prompt_chars)")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadChatRequest("stream", "must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadChatRequest("stream_options", "must be an object")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    knobs, sources = _knobs(body.get(EXTENSION), headers)
    payload = {k: v for k, v in body.items() if k != EXTENSION}
    for key, value in payload.items():  # before anything is routed or stored: the upstream gets JSON
        problem = json_problem(value, depth=2)  # inside the body's object
        if problem is not None:
            raise BadChatRequest(key[:200], problem)
    return ChatRequest(
        model=model, routed=model == alias, stream=stream, include_usage=include_usage,
        messages=tuple(messages), payload=payload, cost_weight=knobs.get("cost_weight"),
        models=knobs.get("models"), context=knobs.get("context") or {},
        models_param=sources.get("models", f"{EXTENSION}.models"),
    )


KNOB_HEADERS = frozenset(HEADER_PREFIX + knob.replace("_", "-") for knob in KNOBS)


def knob_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The knob headers (`KNOB_HEADERS`, the first of each name) of a request's raw headers, as text: their bytes
    read as UTF-8, as curl sends `{"tenant": "café"}` unescaped (an ASGI server hands header values over as Latin-1
    text, which made it `cafÃ©`: another tenant, other features), and as Latin-1 when they are not UTF-8, as
    Python's http.client (urllib, requests) and browsers' fetch send characters up to U+00FF. Other headers,
    `x-bandit-router-*` ones included, are not read."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in KNOB_HEADERS and key not in out:
            try:
                out[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                out[key] = value.decode("latin-1")
    return out


def _knobs(extension: Any, headers: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The knobs' values, and where each came from (the header's name, or `bandit_router.<knob>`)."""
    raw: dict[str, tuple[str, Any]] = {}
    for knob in KNOBS:
        value = headers.get(HEADER_PREFIX + knob.replace("_", "-"))
        if value is not None:
            raw[knob] = (HEADER_PREFIX + knob.replace("_", "-"), _header_value(knob, value))
    if extension is not None:
        if not isinstance(extension, dict):
            raise BadChatRequest(EXTENSION, "must be an object with cost_weight, models, context")
        unknown = sorted(set(extension) - set(KNOBS))
        if unknown:
            named = ", ".join(f"{name!r}{did_you_mean(name, KNOBS)}" for name in unknown[:5])
            raise BadChatRequest(EXTENSION, f"unknown keys {named}; known: {', '.join(KNOBS)}")
        for knob in KNOBS:
            if extension.get(knob) is not None:
                raw[knob] = (f"{EXTENSION}.{knob}", extension[knob])
    out: dict[str, Any] = {}
    for knob, (where, value) in raw.items():
        try:
            out[knob] = KNOB_RULES[knob].validate_python(value, strict=True)
        except ValidationError as exc:
            error = with_text(exc.errors(include_url=False)[0], value)  # a lone surrogate: which, where (the service's)
            loc = error_loc(error)
            at = field_path(loc) if loc else ""
            field = where if not at else f"{where}{at}" if at.startswith("[") else f"{where}.{at}"
            raise BadChatRequest(field[:200], said(error)) from None  # its own words
    if "models" in out:
        out["models"] = tuple(out["models"])
    return out, {knob: where for knob, (where, _) in raw.items()}


JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
"""A number as JSON writes it, ASCII digits only: `float()` also takes `1_0`, full-width digits, `+3`, `nan`."""


def _header_value(knob: str, value: str) -> Any:
    where = HEADER_PREFIX + knob.replace("_", "-")
    if knob == "cost_weight":
        if JSON_NUMBER.fullmatch(value) is None:
            raise BadChatRequest(where, "must be a number as JSON writes it, such as 2.5")
        return float(value)
    if knob == "models":
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return json.loads(value, object_pairs_hook=once_each)  # a key given twice is refused, as in the body
    except DuplicateKey as exc:
        raise BadChatRequest(where, str(exc)) from None
    except (ValueError, RecursionError):
        raise BadChatRequest(where, "must be a JSON object") from None
