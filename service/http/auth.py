"""The admin token check of admin endpoints (and of the dashboard when a token is set)."""

from __future__ import annotations

import secrets

from service.errors import Unauthorized
from service.settings import Settings


def require_admin(settings: Settings, authorization: str | None) -> None:
    """Unauthorized unless `Authorization: Bearer <admin token>` matches the settings."""
    token = settings.admin_token
    if token is None:
        raise Unauthorized("admin endpoints are disabled: start the node with --admin-token")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("a valid `Authorization: Bearer <token>` header is required")


def bearer_or_token(authorization: str | None, token: str | None) -> str | None:
    """An Authorization header, or one made from a `?token=` query value (for browsers)."""
    if authorization is None and token is not None:
        return f"Bearer {token}"
    return authorization
