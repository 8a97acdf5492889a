"""The dashboard: server-rendered pages, a little JavaScript, and the live channel.

Pages read the browser session themselves (`viewer.page`), open `scoped()` for what they
show, and change things only through the REST API (with the X-CSRF-Token header) or a
CSRF-checked form. `/live` (serverflow.live) pushes the organisation's events to them.
"""

from __future__ import annotations

import functools
import io
from importlib import resources
from typing import Any, cast

from babel.messages.extract import extract
from quart import Blueprint, Quart, Response, g, redirect, render_template, request, url_for
from quart.blueprints import BlueprintSetupState
from quart_schema import hide
from werkzeug.wrappers import Response as WerkzeugResponse

from serverflow import i18n, live
from serverflow.auth import sign_in, sign_out
from serverflow.csrf import FIELD as CSRF_FIELD
from serverflow.csrf import check_csrf, csrf_token
from serverflow.errors import AuthenticationRequired, TooManyRequests
from serverflow.web import labels
from serverflow.web.viewer import current_viewer, safe_next

bp = Blueprint(
    "web", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

# Only this origin's scripts, styles and sockets; no frames, no plugins, no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    app = cast(Quart, state.app)
    i18n.init_app(app)
    app.jinja_env.globals.update(
        csrf_token=csrf_token,
        csrf_field=CSRF_FIELD,
        sf_config=sf_config,
        status_label=labels.status_label,
        role_label=labels.role_label,
        mode_label=labels.mode_label,
        kind_label=labels.kind_label,
        extension_label=labels.extension_label,
        describe_event=labels.describe_event,
    )


@functools.cache
def js_message_ids() -> tuple[str, ...]:
    """The texts serverflow.js shows: extracted from it, translated for each page."""
    source = resources.files("serverflow.web").joinpath("static/serverflow.js").read_bytes()
    found = extract("javascript", io.BytesIO(source), keywords=i18n.KEYWORDS)
    return tuple(sorted({str(m[1]) for m in found if isinstance(m[1], str)}))


def sf_config(**extra: Any) -> dict[str, Any]:
    """What serverflow.js needs: language, its texts translated, the viewer's role."""
    locale = i18n.current_locale()
    viewer = g.get("sf_viewer")
    messages = {} if locale == i18n.DEFAULT else {m: i18n.gettext(m) for m in js_message_ids()}
    return {
        "locale": locale,
        "messages": messages,
        "errors": i18n.error_messages(),
        "role": str(viewer.role) if viewer else None,
        **extra,
    }


@bp.app_context_processor
def _inject() -> dict[str, object]:
    return {"viewer": g.get("sf_viewer")}


@bp.after_app_request
async def _headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


# -- signing in and out ---------------------------------------------------------------


@bp.get("/login")
@hide
async def login_form() -> str | WerkzeugResponse:
    if await current_viewer() is not None:
        return redirect(safe_next(request.args.get("next")) or url_for("web.overview"))
    await i18n.resolve_locale()
    return await render_template(
        "login.html", error=None, email="", next=safe_next(request.args.get("next"))
    )


@bp.post("/login")
@hide
async def login() -> WerkzeugResponse | tuple[str, int, dict[str, str]]:
    form = await request.form
    check_csrf(form.get(CSRF_FIELD))
    email = form.get("email", "")
    target = safe_next(form.get("next"))
    try:
        await sign_in(email, form.get("password", ""))
    except (AuthenticationRequired, TooManyRequests) as exc:
        await i18n.resolve_locale()
        html = await render_template("login.html", error=exc, email=email, next=target)
        wait = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else {}
        return html, exc.status, wait
    return redirect(target or url_for("web.overview"))


@bp.post("/logout")
@hide
async def logout() -> WerkzeugResponse:
    form = await request.form
    check_csrf(form.get(CSRF_FIELD))
    await sign_out()
    return redirect(url_for("web.login_form"))


@bp.get("/favicon.ico")
@hide
async def favicon() -> Response:
    return Response(status=204)


bp.add_websocket("/live", "live", live.channel)

from serverflow.web import account, apps, fleet, marketplace  # noqa: E402,F401
