"""Secrets never reach a log line: query parameters whose name holds `key`, `token`, `secret` or `password` (any
case, percent-encoded or not) have their value replaced by `[REDACTED]` in every record of uvicorn's access and
error loggers (`create_app` installs the filter; the service's own log lines never hold a URL).

API keys are only accepted in the `Authorization` header (a key in the query string gets a 401 like any missing
key); the redaction is for the clients that send one there anyway, whose request line uvicorn's access log
would otherwise keep.

Examples:
    >>> redact_query("GET /v1/stats?api_key=abc&x=1 HTTP/1.1")
    'GET /v1/stats?api_key=[REDACTED]&x=1 HTTP/1.1'
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

SENSITIVE = ("key", "token", "secret", "password")
REDACTED = "[REDACTED]"
_PARAM = re.compile(r"([?&;])([^=&;#\s\"']*)=([^&;#\s\"']*)")
LOGGERS = ("uvicorn.access", "uvicorn.error")


def _replace(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).lower()
    if any(word in name for word in SENSITIVE):
        return f"{match.group(1)}{match.group(2)}={REDACTED}"
    return match.group(0)


def redact_query(text: str) -> str:
    """`text` with the values of sensitive query parameters replaced."""
    return _PARAM.sub(_replace, text) if "=" in text else text


class RedactQuery(logging.Filter):
    """A logging filter that redacts the message and every string argument of a record (uvicorn's access log
    passes the request path, query included, as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def install() -> None:
    """Attach the filter to the loggers that can carry a request's URL (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuery) for f in logger.filters):
            logger.addFilter(RedactQuery())
