"""Desired-state documents (docs/deploys.md): the deploy actions' parameter schemas and the
document hash both sides compute. Light on imports: the idle agent loads it."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from typing import Any

from serverflow_contract.naming import (
    APP_NAME,
    APP_NAME_MAX,
    BRANCH_MAX,
    COMMIT,
    DOMAIN_MAX,
    ENV_VALUE_MAX,
    HEALTH_PATH_MAX,
    PROCESS_SCALE_MAX,
    RELEASE_ID,
    REPO_URL_MAX,
    RUNTIME_NAME_MAX,
    InvalidName,
    check_domain,
)
from serverflow_contract.protocol import canonical

APPLY_ACTION = "state.apply"
RESOLVE_ACTION = "git.resolve"


def document_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the document without its `hash` member."""
    body = {k: v for k, v in document.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def check_address(value: Any) -> str:
    """Where a server is reached from outside (`state.apply` answers it): an IP address or
    a host name; raises InvalidName."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            pass
    try:
        return check_domain(value)
    except InvalidName:
        raise InvalidName(
            f"invalid address {str(value)[:80]!r}: not an IP address or a host name"
        ) from None


_ARGV_SCHEMA = {"type": "array", "items": {"type": "string"}, "maxItems": 200}

# The action's parameter schema: types and names strictly; the meaning of each app entry
# is checked app by app (parse_app), so one bad entry fails that app, not the document.
STATE_APPLY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "minimum": 0},
        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "deployment": {"type": ["string", "integer", "null"], "maxLength": 100},
        "apps": {
            "type": "array",
            "maxItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": f"^{APP_NAME}$",
                        "maxLength": APP_NAME_MAX,
                    },
                    "runtime": {"type": ["string", "null"], "maxLength": RUNTIME_NAME_MAX},
                    "repo": {"type": "string", "minLength": 1, "maxLength": REPO_URL_MAX},
                    "commit": {"type": "string", "pattern": f"^(?:{COMMIT})$"},
                    "release": {"type": "string", "pattern": f"^{RELEASE_ID}$"},
                    "build": {"type": ["array", "null"], "maxItems": 20, "items": _ARGV_SCHEMA},
                    "start": {**_ARGV_SCHEMA, "type": ["array", "null"]},
                    "port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    # The app's stable address on this server: the port the proxy listens on
                    # (plain HTTP, any host name) and routes to whichever release is live.
                    "public_port": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "maximum": 65535,
                    },
                    "env": {
                        "type": ["object", "null"],
                        "additionalProperties": {"type": "string", "maxLength": ENV_VALUE_MAX},
                    },
                    "health": {
                        "type": ["object", "null"],
                        "properties": {
                            "path": {"type": ["string", "null"], "maxLength": HEALTH_PATH_MAX},
                            "timeout_s": {"type": "number", "minimum": 1, "maximum": 1800},
                        },
                    },
                    "domains": {
                        "type": ["array", "null"],
                        "maxItems": 100,
                        "items": {"type": "string", "maxLength": DOMAIN_MAX},
                    },
                    "tls": {"type": ["boolean", "null"]},
                    "keep_releases": {"type": "integer", "minimum": 1, "maximum": 100},
                    # Processes per Procfile type other than web (a type not named: 1);
                    # the type names are checked by parse_app (naming.check_process_type).
                    "formation": {
                        "type": ["object", "null"],
                        "additionalProperties": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": PROCESS_SCALE_MAX,
                        },
                    },
                },
                "required": ["name", "repo", "commit", "release"],
            },
        },
    },
    "required": ["version", "hash", "apps"],
}

GIT_RESOLVE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "repo": {"type": "string", "minLength": 1, "maxLength": REPO_URL_MAX},
        # Without a branch: the repository's default branch (its HEAD).
        "branch": {"type": "string", "minLength": 1, "maxLength": BRANCH_MAX},
    },
    "required": ["repo"],
    "additionalProperties": False,
}
