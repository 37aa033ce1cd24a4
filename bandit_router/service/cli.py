"""`bandit-router serve`: run the HTTP service with uvicorn (uvloop + httptools, no access log by default)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import KEYS, ConfigError, Settings, load_settings
from ..store import SQLiteStore, StoreError

SERVE_HELP = """Serve the routing API (POST /v1/route, POST /v1/feedback, ...; OpenAPI at /docs).

Settings come from --config FILE (or $BANDIT_ROUTER_CONFIG, or ./bandit-router.toml), then from \
BANDIT_ROUTER_* environment variables, then from these options.

With no settings at all: 127.0.0.1:8000, database ./bandit-router.db, the shipped catalog, the `default` policy.
"""


def _help(name: str) -> str:
    """An option's help: the setting's own help text and default (`bandit_router.config.sections`)."""
    return f"{KEYS[name].help} (setting `{name}`, default {getattr(Settings(), name)})."


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file (see the docs: service → configuration).")
    ] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    db: Annotated[Path | None, typer.Option(help=_help("db"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
) -> None:
    import uvicorn

    overrides: dict[str, Any] = {
        k: v
        for k, v in {"host": host, "port": port, "db": db, "workers": workers, "log_level": log_level}.items()
        if v is not None
    }
    try:
        settings = load_settings(config, overrides=overrides)
        storage = settings.storage
        SQLiteStore(storage.db, synchronous=storage.synchronous).prepare()  # the schema, once, before workers
    except (ConfigError, StoreError) as exc:
        typer.echo(f"bandit-router serve: {exc}", err=True)
        raise typer.Exit(2) from None
    server = settings.server
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if server.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth_enabled:
        logging.getLogger("bandit_router.service").warning(
            "binding %s without API keys: anyone who can reach this port can route and send feedback", server.host
        )
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": settings.server.access_log,
        "log_level": settings.server.log_level,
        "timeout_graceful_shutdown": 10,
        "backlog": 2048,
        "proxy_headers": False,  # bound to loopback by default: trust no X-Forwarded-* header
        "server_header": False,
    }
    if settings.server.workers == 1:
        from .app import create_app, tune_process

        app = create_app(settings)
        tune_process()
        uvicorn.run(app, **common)
        return
    from .app import SERVE_ARGS

    hand_off = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    os.environ[SERVE_ARGS] = json.dumps({"config": None if config is None else str(config), "overrides": hand_off})
    sys.stdout.flush()
    uvicorn.run("bandit_router.service.app:app_from_environment", factory=True, workers=server.workers, **common)


def register(app: typer.Typer) -> None:
    """Add `serve` to the `bandit-router` command."""
    app.command("serve", help=SERVE_HELP)(serve)
