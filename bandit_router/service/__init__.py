"""The routing service: `create_app(settings)` builds the FastAPI app (see `app.py`); `bandit-router serve` runs it.

Only HTTP and the writer live here; what the log means is `bandit_router.log`, how it is stored
`bandit_router.store`.

    app.py         create_app: the lifespan builds the store, the engine, the metrics and the authenticator
    routes.py      each endpoint: HTTP ⇄ core values, nothing else
    schemas.py     request and response models
    errors.py      every error → HTTP status, in one place (exceptions.py: the service's own errors)
    auth.py        API keys (constant-time), client and admin roles
    metrics.py     Prometheus counters
    engine.py      the facade the routes call: route, feedback, models, budgets, promotion, reads, recovery
    writer.py      the writer thread: operations, group commit, reward-window sweeps
    cli.py         `bandit-router serve`

`create_app` is imported lazily, so that the command line does not load FastAPI for every sub-command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
