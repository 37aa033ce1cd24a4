"""The routing service: `create_app(settings)` builds the FastAPI app (see `app.py`); `bandit-router serve` runs it.

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
