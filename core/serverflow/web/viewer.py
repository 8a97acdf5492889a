"""Who is looking at a dashboard page, and the `page()` decorator every page uses."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from quart import g, redirect, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from serverflow.auth import session_membership, session_user
from serverflow.errors import PermissionDenied
from serverflow.i18n import resolve_locale
from serverflow.models import Organization, Role, User, UserSession
from serverflow.tenancy import scoped


@dataclass(frozen=True)
class Viewer:
    user: User
    session: UserSession
    org: Organization
    role: Role

    def can(self, needed: Role | str) -> bool:
        return self.role.allows(Role(needed))


async def current_viewer() -> Viewer | None:
    """The signed-in user, the organisation they work in and their role there."""
    if "sf_viewer" in g:
        cached: Viewer | None = g.sf_viewer
        return cached
    found = await session_user()
    viewer = None
    if found is not None:
        sess, user = found
        chosen = await session_membership(sess, user)
        org = await Organization.get(id=chosen.organization_id)
        viewer = Viewer(user=user, session=sess, org=org, role=Role(chosen.role))
    g.sf_viewer = viewer
    return viewer


def safe_next(target: str | None) -> str | None:
    """A local path to return to after signing in (never another site)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    return target


Page = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=Page)


def page(role: Role = Role.VIEWER, tenant: bool = True) -> Callable[[F], F]:
    """Sign-in required (else to /login), at least `role`, run in the viewer's tenant scope
    (`tenant=False`: no transaction, for pages that wait on something else)."""

    def decorator(func: F) -> F:
        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            viewer = await current_viewer()
            if viewer is None:
                back = request.full_path.rstrip("?")
                return redirect(url_for("web.login_form", next=back if back != "/" else None))
            await resolve_locale()
            if not viewer.can(role):
                raise PermissionDenied(
                    f"This page needs the {role} role; you are {viewer.role}.", code="AUTH004"
                )
            if not tenant:
                return await func(viewer, *args, **kwargs)
            async with scoped(viewer.org.id, viewer.user.id):
                return await func(viewer, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def redirect_to(endpoint: str, **values: Any) -> WerkzeugResponse:
    return redirect(url_for(endpoint, **values))
