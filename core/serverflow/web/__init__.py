"""Server-rendered dashboard pages."""

from __future__ import annotations

from quart import Blueprint, Response, redirect, render_template, request, url_for
from quart_schema import hide
from werkzeug.wrappers import Response as WerkzeugResponse

from serverflow.auth import session_user, sign_in, sign_out
from serverflow.csrf import FIELD as CSRF_FIELD
from serverflow.csrf import check_csrf, csrf_token
from serverflow.errors import AuthenticationRequired, PermissionDenied, TooManyRequests
from serverflow.models import Membership, Organization, Server
from serverflow.tenancy import scoped

bp = Blueprint(
    "web", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)


@bp.app_context_processor
def _inject() -> dict[str, object]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD}


@bp.get("/login")
@hide
async def login_form() -> str | WerkzeugResponse:
    if await session_user() is not None:
        return redirect(url_for("web.overview"))
    return await render_template("login.html", error=None, email="")


@bp.post("/login")
@hide
async def login() -> str | WerkzeugResponse | tuple[str, int]:
    form = await request.form
    check_csrf(form.get(CSRF_FIELD))
    email = form.get("email", "")
    try:
        await sign_in(email, form.get("password", ""))
    except (AuthenticationRequired, TooManyRequests) as exc:
        html = await render_template("login.html", error=exc, email=email)
        return html, exc.status
    return redirect(url_for("web.overview"))


@bp.post("/logout")
@hide
async def logout() -> WerkzeugResponse:
    form = await request.form
    check_csrf(form.get(CSRF_FIELD))
    await sign_out()
    return redirect(url_for("web.login_form"))


@bp.get("/")
@hide
async def overview() -> str | WerkzeugResponse:
    found = await session_user()
    if found is None:
        return redirect(url_for("web.login_form"))
    sess, user = found
    async with scoped(user_id=user.id):
        memberships = await Membership.all().order_by("created_at")
    if not memberships:
        raise PermissionDenied("Your account is not a member of any organisation.")
    membership = next(
        (m for m in memberships if m.organization_id == sess.current_org_id), memberships[0]
    )
    org = await Organization.get(id=membership.organization_id)
    async with scoped(org.id, user.id):
        servers = await Server.all().order_by("name")
    return await render_template(
        "overview.html", user=user, org=org, role=membership.role, servers=servers
    )


@bp.get("/favicon.ico")
@hide
async def favicon() -> Response:
    return Response(status=204)
