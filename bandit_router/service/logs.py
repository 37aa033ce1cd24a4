"""The server's log lines (`serve` and each of its workers): their format and level, and no line per request
below `debug`.

Each line starts with its time in UTC, ISO 8601 with milliseconds and `Z` (`2026-11-28T09:54:05.123Z INFO …`),
whatever the host's time zone: as the database's, the API's and the buckets' times are Unix (UTC) times, and a
local time without its offset is ambiguous in the hour a daylight-saving change repeats and cannot be matched
across hosts in other zones. uvicorn's own lines (`INFO:     Started server process [pid]`, its access log) get
the same time first (`uvicorn_log_config`); they had none.

httpx, the HTTP client of the gateway, its judge and its named routers, logs one INFO line per upstream call
(`HTTP Request: POST <url> "HTTP/1.1 200 OK"`): under a steady gateway load those were all but a few dozen lines
of the log. Its logger starts at WARNING unless the level is `debug`. uvicorn's access log (a line per request)
is off unless `access_log = true`.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PER_CALL_LOGGERS = ("httpx",)
"""Libraries that log a line per HTTP call at INFO: heard from at `debug` only."""


def in_utc(formatter: logging.Formatter) -> logging.Formatter:
    """`formatter` with `asctime` in UTC: `YYYY-MM-DDTHH:MM:SS.mmmZ` (logging's own hooks for it)."""
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure_logging(level: str) -> None:
    """Time (UTC), level, logger, message, from `level` up; `PER_CALL_LOGGERS` from WARNING below `debug`."""
    handler = logging.StreamHandler()
    handler.setFormatter(in_utc(logging.Formatter(LOG_FORMAT)))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for name in PER_CALL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)


def uvicorn_formatter(fmt: str, access: bool = False, use_colors: bool | None = None) -> logging.Formatter:
    """uvicorn's formatter (its level prefix, its colours on a terminal) with the time in UTC first."""
    from uvicorn.logging import AccessFormatter, DefaultFormatter

    kind = AccessFormatter if access else DefaultFormatter
    return in_utc(kind(fmt="%(asctime)s " + fmt, use_colors=use_colors))


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration (`LOGGING_CONFIG`), its lines starting with the time in UTC."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name, formatter in config["formatters"].items():
        formatter["()"] = f"{__name__}.uvicorn_formatter"
        formatter["access"] = name == "access"
    return config
