"""Words the dashboard shows for stored values (statuses, roles, modes) and events.

serverflow.js has the same texts for what it renders live; both are in the catalogs once.
"""

from __future__ import annotations

from typing import Any

from serverflow.i18n import N_, gettext

STATUS = {
    "pending": N_("Waiting for the agent"),
    "online": N_("Online"),
    "offline": N_("Offline"),
    "queued": N_("Queued"),
    "running": N_("Running"),
    "live": N_("Live"),
    "failed": N_("Failed"),
    "superseded": N_("Superseded"),
    "enabled": N_("Enabled"),
    "disabled": N_("Disabled"),
    "none": N_("Not deployed"),
}
ROLES = {
    "viewer": N_("Viewer"),
    "member": N_("Member"),
    "admin": N_("Admin"),
    "owner": N_("Owner"),
}
MODES = {
    "full": N_("Full: read, change and destructive actions"),
    "standard": N_("Standard: read and change actions"),
    "read-only": N_("Read only: read actions only"),
}
KINDS = {"deploy": N_("Deployment"), "rollback": N_("Rollback"), "config": N_("Config change")}
REASONS = {"disconnected": N_("disconnected"), "no heartbeat": N_("no heartbeat")}
EXTENSION_POINTS = {
    "runtimes": N_("Runtimes"),
    "dns_providers": N_("DNS providers"),
    "backup_targets": N_("Backup targets"),
    "server_providers": N_("Server providers"),
    "cron_backends": N_("Cron backends"),
    "templates": N_("App templates"),
    "dashboard_panels": N_("Dashboard panels"),
    "blueprints": N_("Pages and API routes"),
}


def _word(table: dict[str, str], value: Any) -> str:
    text = str(value)
    return gettext(table[text]) if text in table else text


def status_label(value: Any) -> str:
    return _word(STATUS, value)


def role_label(value: Any) -> str:
    return _word(ROLES, value)


def mode_label(value: Any) -> str:
    return _word(MODES, value)


def kind_label(value: Any) -> str:
    return _word(KINDS, value)


def extension_label(value: Any) -> str:
    return _word(EXTENSION_POINTS, value)


def describe_event(kind: str, data: dict[str, Any], server: str) -> str:
    """One line of the timeline, in the reader's language."""
    app = str(data.get("app", ""))
    name = str(data.get("name", ""))
    if kind == "server.online":
        return gettext("%(server)s came online", server=server)
    if kind == "server.offline":
        reason = _word(REASONS, data.get("reason", ""))
        return gettext("%(server)s went offline (%(reason)s)", server=server, reason=reason)
    if kind == "agent.registered":
        return gettext("The agent of %(server)s registered", server=server)
    if kind == "agent.key_rotated":
        return gettext("The agent of %(server)s rotated its key", server=server)
    if kind == "deployment.started":
        if data.get("kind") == "rollback":
            return gettext("Rollback of %(app)s started on %(server)s", app=app, server=server)
        return gettext("Deployment of %(app)s started on %(server)s", app=app, server=server)
    if kind == "deployment.finished":
        return gettext(
            "Deployment of %(app)s on %(server)s: %(status)s",
            app=app,
            server=server,
            status=status_label(data.get("status", "")),
        )
    if kind == "plugin.installed":
        return gettext("Plugin %(name)s installed by %(by)s", name=name, by=data.get("by", ""))
    if kind == "plugin.enabled":
        return gettext("Plugin %(name)s enabled by %(by)s", name=name, by=data.get("by", ""))
    if kind == "plugin.disabled":
        return gettext("Plugin %(name)s disabled by %(by)s", name=name, by=data.get("by", ""))
    if server:
        return gettext("%(kind)s on %(server)s", kind=kind, server=server)
    return kind
