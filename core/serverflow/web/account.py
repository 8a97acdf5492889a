"""The event timeline, the audit view, and the user's settings (language, API tokens)."""

from __future__ import annotations

from quart import g, render_template, request
from quart_schema import hide
from werkzeug.wrappers import Response as WerkzeugResponse

from serverflow import audit as audit_log
from serverflow import i18n
from serverflow.auth import operator_needed
from serverflow.csrf import FIELD as CSRF_FIELD
from serverflow.csrf import check_csrf
from serverflow.errors import InvalidInput
from serverflow.models import Event, Server, User
from serverflow.web import bp
from serverflow.web.viewer import Viewer, page, redirect_to

AUDIT_PAGE = 100


@bp.get("/events")
@hide
@page()
async def events(viewer: Viewer) -> str:
    rows = await Event.all().order_by("-id").limit(200)
    names = {s.id: s.name for s in await Server.all().only("id", "name")}
    return await render_template(
        "events.html",
        events=rows,
        names=names,
        server_names={str(k): v for k, v in names.items()},
        active="events",
    )


@bp.get("/audit")
@hide
@page()
async def audit(viewer: Viewer) -> str:
    args = request.args
    actor = args.get("actor", "").strip()[:300] or None
    action = args.get("action", "").strip()[:100] or None
    before = args.get("before", "")
    # ?chain=instance: the instance's own chain, for instance operators.
    instance = args.get("chain") == "instance"
    if instance and not viewer.user.is_operator:
        raise operator_needed()
    chain = audit_log.INSTANCE if instance else viewer.org.id
    rows = await audit_log.page(
        int(before) if before.isdigit() else None, AUDIT_PAGE, actor, action, chain=chain
    )
    verdict = await audit_log.verify(chain) if args.get("verify") == "1" else None
    older = rows[-1].seq if len(rows) == AUDIT_PAGE and rows[-1].seq > 1 else None
    return await render_template(
        "audit.html",
        entries=rows,
        actor=actor,
        action=action,
        older=older,
        verdict=verdict,
        instance=instance,
        active="audit",
    )


@bp.get("/settings")
@hide
@page()
async def settings(viewer: Viewer) -> str:
    return await render_template(
        "settings.html",
        saved=request.args.get("saved") == "1",
        languages=i18n.NAMES,
        active="settings",
    )


@bp.post("/settings/language")
@hide
@page()
async def set_language(viewer: Viewer) -> WerkzeugResponse:
    form = await request.form
    check_csrf(form.get(CSRF_FIELD))
    choice = form.get("locale", "")
    if choice and choice not in i18n.SUPPORTED:
        raise InvalidInput(f"unsupported language {choice!r}", code="VAL001")
    await User.filter(id=viewer.user.id).update(locale=choice or None)
    g.pop("sf_session", None)  # the cached session row holds the old setting
    return redirect_to("web.settings", saved="1")
