"""Desired-state documents (docs/deploys.md): what each server should run."""

from __future__ import annotations

from typing import Any

from serverflow_contract.desired import APPLY_ACTION, RESOLVE_ACTION, document_hash

__all__ = ["APPLY_ACTION", "RESOLVE_ACTION", "app_entry", "document", "release_id"]


def app_entry(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One app of the document: the deployment's spec plus the env it was deployed with."""
    return {**spec, "env": env}


def document(version: int, deployment_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": version,
        "deployment": deployment_id,
        "apps": sorted(entries, key=lambda e: e["name"]),
    }
    doc["hash"] = document_hash(doc)
    return doc


def release_id(number: int, commit: str) -> str:
    return f"r{number}-{commit[:7]}"
