"""CSRF protection for cookie-authenticated requests (forms and the dashboard's API calls)."""

from __future__ import annotations

import hmac
import secrets

from quart import session

from serverflow.errors import PermissionDenied

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """The token of this browser session, created on first use (kept in the signed cookie)."""
    token = session.get(FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[FIELD] = token
    return token


def check_csrf(submitted: str | None) -> None:
    expected = session.get(FIELD)
    if (
        not submitted
        or not isinstance(expected, str)
        or not hmac.compare_digest(submitted.encode(), expected.encode())
    ):
        raise PermissionDenied(
            "The form's security token is missing or expired; reload the page and try again.",
            code="AUTH006",
        )
