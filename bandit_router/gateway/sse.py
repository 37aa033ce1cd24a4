"""Reading an event stream (server-sent events) line by line, as the SSE specification reads it.

A line ends at CR, LF or CRLF and nowhere else. httpx's `Response.aiter_lines` splits like `str.splitlines`, also at
U+2028, U+2029 and U+0085, which a JSON string may hold unescaped (JavaScript's `JSON.stringify` and Rust's
serde_json write them so) and a model may write: a streamed chunk holding one became two halves that are not JSON.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")
"""Where an SSE line ends: CR, LF or CRLF."""


DONE_LINES = ("data: [DONE]", "data:[DONE]")
"""A stream's last line, kept even when the body ends before its line does."""


async def sse_lines(parts: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of an event stream's body (UTF-8, as SSE always is; an invalid byte becomes U+FFFD). A CRLF split
    between two parts is one line end. A last line the body ends inside is dropped, as SSE discards pending data at
    the end of the stream (a connection cut mid-line is a cut, not a chunk that is not JSON), except a bare
    `data: [DONE]`, which some upstreams send without its line end."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[str] = []
    after_cr = False
    async for part in parts:
        text = decoder.decode(part)
        if not text:
            continue
        if after_cr and text[0] == "\n":  # the LF of a CRLF whose CR ended the previous part
            text = text[1:]
        after_cr = text.endswith("\r")
        pieces = _LINE_END.split(text)
        if len(pieces) == 1:
            pending.append(text)
            continue
        pieces[0] = "".join(pending) + pieces[0]
        pending = [pieces.pop()]
        for line in pieces:
            yield line
    last = "".join(pending) + decoder.decode(b"", final=True)
    if last in DONE_LINES:
        yield last


def error_event_text(event: dict[str, Any]) -> str:
    """The failure an upstream's error event (`{"error": {"message": …}}`, or `{"error": "…"}`) ends a stream with,
    in its own words when it has some (at most 200 characters): they reach the caller's error event and the call
    record."""
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    said = f": {message[:200]}" if isinstance(message, str) and message.strip() else ""
    return f"the upstream sent an error mid-stream{said}"
