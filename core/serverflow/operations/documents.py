"""Previews of the desired-state documents a plan would sign, built without changing anything.

The deployer builds the real document when the plan runs (with the next version number of
the server and the real environment); these previews show the same content, with every
environment value masked and no hash (a hash over masked values would mean nothing).
"""

from __future__ import annotations

import uuid
from typing import Any

from serverflow.controlplane import ControlPlane
from serverflow.deploys.desired import APPLY_ACTION, app_entry, document
from serverflow.deploys.service import decrypt_env
from serverflow.models import AppServer, Deployment, Server, ServerState
from serverflow.operations.operation import masked
from serverflow.tenancy import scoped

NOT_YET = "(assigned when the plan runs)"


async def preview_document(
    cp: ControlPlane,
    org_id: uuid.UUID,
    server: Server,
    app_id: uuid.UUID,
    entry: dict[str, Any] | None,
) -> dict[str, Any]:
    """The server's next document: its live apps, with app `app_id` replaced by `entry`
    (a spec plus its env) or, when `entry` is None, left out."""
    async with scoped(org_id):
        placements = await AppServer.filter(server_id=server.id)
        live_ids = [
            p.live_deployment_id for p in placements if p.live_deployment_id and p.app_id != app_id
        ]
        live = await Deployment.filter(id__in=live_ids) if live_ids else []
        state = await ServerState.get_or_none(server_id=server.id)
    entries = [
        app_entry(d.spec, masked(decrypt_env(cp.keys.cipher, d.env_encrypted)))
        for d in live
        if d.spec and d.spec.get("release")
    ]
    if entry is not None:
        entries.append(entry)
    doc = document((state.version if state else 0) + 1, NOT_YET, entries)
    doc["hash"] = "(SHA-256 of the real document, computed when it is signed)"
    return doc


def apply_command(server: Server, doc: dict[str, Any]) -> dict[str, Any]:
    """The signed command that would carry `doc` to the server."""
    return {
        "server": server.name,
        "action": APPLY_ACTION,
        "kind": "change",
        "params": "the desired_state document above (env values sent in full, over TLS)",
        "version": doc["version"],
    }


def release_view(dep: Deployment | None) -> dict[str, Any] | None:
    if dep is None:
        return None
    return {
        "deployment_id": str(dep.id),
        "release": dep.release,
        "commit": dep.commit_sha,
        "branch": dep.branch,
        "status": str(dep.status),
        "finished_at": dep.finished_at.isoformat() if dep.finished_at else None,
    }
