"""API keys: `Authorization: Bearer <key>` on every /v1 route when keys are configured.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every configured key without stopping
at the first match, so the time taken says nothing about which key (or how much of one) matched. Admin keys may
also do everything a client key may; model changes need an admin key.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum

from ..config import Secrets
from .exceptions import Forbidden, Unauthorized


class Role(Enum):
    CLIENT = "client"
    ADMIN = "admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    """Who a bearer token belongs to. Holds digests only, never the keys."""

    def __init__(self, client_keys: Secrets, admin_keys: Secrets) -> None:
        self._client = [_digest(k) for k in client_keys.reveal()]
        self._admin = [_digest(k) for k in admin_keys.reveal()]
        self.enabled = bool(self._client or self._admin)

    def role(self, token: str | None) -> Role | None:
        if not token:
            return None
        digest = _digest(token)
        admin = client = False
        for key in self._admin:
            admin |= hmac.compare_digest(digest, key)
        for key in self._client:
            client |= hmac.compare_digest(digest, key)
        if admin:
            return Role.ADMIN
        return Role.CLIENT if client else None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authorize(
    auth: Authenticator, authorization: str | None, *, admin: bool = False, action: str = "changing the models"
) -> None:
    """Raise `Unauthorized` (401) without a valid key, `Forbidden` (403) for a client key where `admin` is
    needed (the message names the refused `action`). Without configured keys everything is allowed (bind to
    127.0.0.1)."""
    if not auth.enabled:
        return
    role = auth.role(bearer_token(authorization))
    if role is None:
        raise Unauthorized("missing or invalid API key: send Authorization: Bearer <key>")
    if admin and role is not Role.ADMIN:
        raise Forbidden(f"{action} needs an admin key; this is a client key")
