"""Reading an event stream (server-sent events) line by line, as the SSE specification reads it.

A line ends at CR, LF or CRLF and nowhere else. httpx's `Response.aiter_lines` splits like `str.splitlines`, also at
U+2028, U+2029 and U+0085, which a JSON string may hold unescaped (JavaScript's `JSON.stringify` and Rust's
serde_json write them so) and a model may write: a streamed chunk holding one became two halves that are not JSON.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator

_LINE_END = re.compile(r"\r\n|\r|\n")
"""Where an SSE line ends: CR, LF or CRLF."""


async def sse_lines(parts: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of an event stream's body (UTF-8, as SSE always is; an invalid byte becomes U+FFFD). A CRLF split
    between two parts gives an extra empty line, which SSE reads as the blank line it is."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[str] = []
    async for part in parts:
        text = decoder.decode(part)
        pieces = _LINE_END.split(text)
        if len(pieces) == 1:
            pending.append(text)
            continue
        pieces[0] = "".join(pending) + pieces[0]
        pending = [pieces.pop()]
        for line in pieces:
            yield line
    last = "".join(pending) + decoder.decode(b"", final=True)
    if last:
        yield last
