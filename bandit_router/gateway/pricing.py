"""Tokens and cost of one upstream call: the upstream's `usage` when it reports one, else a count made here.

The count (`estimate_tokens`, the estimate the router prices requests with: ≈ 4 ASCII characters per token,
≈ 1.5 per other character, within ~10% of cl100k on English prose and code) needs no tokenizer. A real tokenizer
would not be more right: each provider tokenizes differently (cl100k, o200k, Llama's, Gemini's), `tiktoken`
downloads its vocabularies at run time, and the count is only needed when an upstream omits `usage` (the gateway
asks for it in streams with `stream_options.include_usage`). Chat formatting adds `TOKENS_PER_MESSAGE` per message
(OpenAI's documented overhead for its chat format), and the reply's priming `REPLY_PRIMING` tokens.

Cost = input tokens × input price + output tokens × output price (the catalog's USD per 1M tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog import ModelSpec
from ..features import estimate_tokens

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING = 3


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call; `source` is `upstream` (reported) or `estimated` (counted here)."""

    input_tokens: int
    output_tokens: int
    source: str = "upstream"

    def cost_usd(self, spec: ModelSpec) -> float:
        return spec.cost_usd(self.input_tokens, self.output_tokens)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else None


def usage_of(body: Mapping[str, Any]) -> Usage | None:
    """The `usage` of an OpenAI chat completion (or of a streamed chunk), None when absent or malformed."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion)


def message_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the `text` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def estimate_input(messages: Iterable[Mapping[str, Any]]) -> int:
    """Estimated prompt tokens of chat `messages`."""
    total = REPLY_PRIMING
    for m in messages:
        total += TOKENS_PER_MESSAGE + estimate_tokens(message_text(m.get("content")))
    return total


def estimated(messages: Iterable[Mapping[str, Any]], answer: str) -> Usage:
    """Usage counted here, for an upstream that reported none."""
    return Usage(estimate_input(messages), estimate_tokens(answer), "estimated")


def answer_text(body: Mapping[str, Any]) -> str:
    """What the first choice's message of a chat completion says: its content, then each tool call as
    `name(arguments)` ('' when there is none). A tool call is an answer: a judge reads it, and its tokens are
    counted when the upstream reports no usage."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping):
            parts = [message_text(message.get("content")), *(f"{name}({arguments})" for name, arguments in
                                                             tool_calls(message))]
            return "\n".join(p for p in parts if p)
    return ""


class StreamedAnswer:
    """One choice of a streamed completion, put together from its deltas as `answer_text` reads it unstreamed: its
    content, then each tool call as `name(arguments)`, one per line; a streamed call comes in pieces (its name
    first, then its arguments a few characters at a time), joined by the call's `index`."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tools: dict[int | str, list[str]] = {}  # index → [name, arguments]

    def add(self, delta: Mapping[str, Any], pieces: list[ToolPiece] | None = None) -> None:
        """Add a delta; `pieces`: its `tool_call_pieces` when the caller has them already (read once per delta)."""
        content = delta.get("content")
        if isinstance(content, str):
            self.content.append(content)
        for key, name, arguments in tool_call_pieces(delta) if pieces is None else pieces:
            kept = self.tools.setdefault(key, ["", ""])
            kept[0] += name
            kept[1] += arguments

    def text(self) -> str:
        parts = ["".join(self.content), *(f"{name}({arguments})" for name, arguments in self.tools.values())]
        return "\n".join(part for part in parts if part)


ToolPiece = tuple[int | str, str, str]
"""(key, name, arguments) of one tool call, or one streamed piece of it; `key` joins a call's pieces (its `index`,
else its place in the list; `function_call` for the older single call)."""


def tool_call_pieces(message: Mapping[str, Any]) -> list[ToolPiece]:
    """(key, name, arguments) of each tool call of a message or a streamed delta (`tool_calls`, or the older
    `function_call`); a name or arguments that are not text count as ''."""
    calls = message.get("tool_calls")
    listed = [(c.get("index", i), c.get("function")) for i, c in enumerate(calls) if isinstance(c, Mapping)] \
        if isinstance(calls, list) else []
    listed.append(("function_call", message.get("function_call")))
    return [(key if isinstance(key, int | str) else repr(key), _text(f.get("name")), _text(f.get("arguments")))
            for key, f in listed if isinstance(f, Mapping)]


def tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, arguments) of each tool call of a message or a streamed delta (`tool_call_pieces` without the keys)."""
    return [(name, arguments) for _, name, arguments in tool_call_pieces(message)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
