"""The server's log lines (`serve` and each of its workers): their format and level, and no line per request
below `debug`.

httpx, the HTTP client of the gateway, its judge and its named routers, logs one INFO line per upstream call
(`HTTP Request: POST <url> "HTTP/1.1 200 OK"`): under a steady gateway load those were all but a few dozen lines
of the log. Its logger starts at WARNING unless the level is `debug`. uvicorn's access log (a line per request)
is off unless `access_log = true`.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PER_CALL_LOGGERS = ("httpx",)
"""Libraries that log a line per HTTP call at INFO: heard from at `debug` only."""


def configure_logging(level: str) -> None:
    """Time, level, logger, message, from `level` up; `PER_CALL_LOGGERS` from WARNING below `debug`."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    for name in PER_CALL_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
