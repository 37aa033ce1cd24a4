"""The server's log lines (`serve` and each of its workers): their format and level, and no line per request
below `debug`.

Each line starts with its time in UTC, ISO 8601 with milliseconds and `Z` (`2026-11-28T09:54:05.123Z INFO …`),
whatever the host's time zone: as the database's, the API's and the buckets' times are Unix (UTC) times, and a
local time without its offset is ambiguous in the hour a daylight-saving change repeats and cannot be matched
across hosts in other zones.

httpx, the HTTP client of the gateway, its judge and its named routers, logs one INFO line per upstream call
(`HTTP Request: POST <url> "HTTP/1.1 200 OK"`): under a steady gateway load those were all but a few dozen lines
of the log. Its logger starts at WARNING unless the level is `debug`. uvicorn's access log (a line per request)
is off unless `access_log = true`.
"""

from __future__ import annotations

import logging
import time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PER_CALL_LOGGERS = ("httpx",)
"""Libraries that log a line per HTTP call at INFO: heard from at `debug` only."""


class UTCFormatter(logging.Formatter):
    """`LOG_FORMAT` with `asctime` in UTC: `YYYY-MM-DDTHH:MM:SS.mmmZ`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def configure_logging(level: str) -> None:
    """Time (UTC), level, logger, message, from `level` up; `PER_CALL_LOGGERS` from WARNING below `debug`."""
    handler = logging.StreamHandler()
    handler.setFormatter(UTCFormatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for name in PER_CALL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
