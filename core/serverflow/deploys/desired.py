"""Desired-state documents (docs/deploys.md): what each server should run."""

from __future__ import annotations

import hashlib
from typing import Any

from serverflow_contract import protocol

APPLY_ACTION = "state.apply"
RESOLVE_ACTION = "git.resolve"


def app_entry(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One app of the document: the deployment's spec plus the env it was deployed with."""
    return {**spec, "env": env}


def document(version: int, deployment_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": version,
        "deployment": deployment_id,
        "apps": sorted(entries, key=lambda e: e["name"]),
    }
    doc["hash"] = digest(doc)
    return doc


def digest(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical document without its own hash."""
    body = {k: v for k, v in doc.items() if k != "hash"}
    return hashlib.sha256(protocol.canonical(body)).hexdigest()


def release_id(number: int, commit: str) -> str:
    return f"r{number}-{commit[:7]}"
