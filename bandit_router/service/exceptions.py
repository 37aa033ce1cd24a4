"""Errors of the service layer. `errors.py` maps these and the core's (`bandit_router.errors`) to HTTP.

BanditRouterError
 ├── InvalidInput
 │    └── InvalidField       a request field is wrong; names the field                    → 422
 ├── PayloadTooLarge         body or prompt over the configured limit                     → 413
 ├── UnsupportedMediaType    a request body without Content-Type: application/json        → 415
 ├── NotFound                no such model to retire                                      → 404
 ├── Conflict                decision id already used, model already active, last model   → 409
 ├── Unauthorized            missing or wrong API key                                     → 401
 ├── Forbidden               a client key on an admin route                               → 403
 ├── Gone                    a stored decision that cannot be read (do not retry)         → 410
 └── Unavailable             starting, recovering, stopping, or the database is unusable  → 503
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import BanditRouterError, InvalidInput


class InvalidField(InvalidInput):
    """A request field is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidBody(BanditRouterError):
    """A body `json` parsed (`body`) that its model refused (`error`): a 422 that can read back text pydantic
    does not report (a lone surrogate's)."""

    def __init__(self, error: ValidationError, body: Any) -> None:
        super().__init__(error.title)  # not str(error): it writes every error out
        self.error, self.body = error, body


class PayloadTooLarge(BanditRouterError):
    """The request body or the prompt is larger than the configured limit."""


class UnsupportedMediaType(BanditRouterError):
    """A request body must be sent with `Content-Type: application/json`."""


class NotFound(BanditRouterError):
    """The resource named in the path does not exist."""


class Conflict(BanditRouterError):
    """The request conflicts with what is stored."""


class Unauthorized(BanditRouterError):
    """A valid API key is required."""


class Forbidden(BanditRouterError):
    """The API key is valid but may not do this."""


class Gone(BanditRouterError):
    """The stored decision named cannot be read (`UnreadableDecision`: a value corrupted on disk or edited by hand):
    a lasting condition, not one a retry outlives, so not `Unavailable`."""


class Unavailable(BanditRouterError):
    """The service cannot answer now; retry later."""
