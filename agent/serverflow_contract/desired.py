"""Parameter schemas of the deploy actions (kept import-free: the idle agent loads them)."""

from __future__ import annotations

from typing import Any

APP_NAME = r"[a-z0-9]+(?:[_-][a-z0-9]+)*"  # no "--": "<app>--" prefixes its PM2 processes
RELEASE_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
COMMIT = r"[0-9a-f]{40}|[0-9a-f]{64}"

_ARGV_SCHEMA = {"type": "array", "items": {"type": "string"}, "maxItems": 200}

# The action's parameter schema: types and names strictly; the meaning of each app entry
# is checked app by app (parse_app), so one bad entry fails that app, not the document.
STATE_APPLY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "minimum": 0},
        "hash": {"type": "string", "pattern": "[0-9a-f]{64}"},
        "deployment": {"type": ["string", "integer", "null"], "maxLength": 100},
        "apps": {
            "type": "array",
            "maxItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": APP_NAME, "maxLength": 63},
                    "runtime": {"type": ["string", "null"], "maxLength": 63},
                    "repo": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "commit": {"type": "string", "pattern": COMMIT},
                    "release": {"type": "string", "pattern": RELEASE_ID},
                    "build": {"type": ["array", "null"], "maxItems": 20, "items": _ARGV_SCHEMA},
                    "start": {**_ARGV_SCHEMA, "type": ["array", "null"]},
                    "port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    "env": {
                        "type": ["object", "null"],
                        "additionalProperties": {"type": "string", "maxLength": 65536},
                    },
                    "health": {
                        "type": ["object", "null"],
                        "properties": {
                            "path": {"type": ["string", "null"], "maxLength": 2001},
                            "timeout_s": {"type": "number", "minimum": 1, "maximum": 1800},
                        },
                    },
                    "domains": {
                        "type": ["array", "null"],
                        "maxItems": 100,
                        "items": {"type": "string", "maxLength": 253},
                    },
                    "tls": {"type": ["boolean", "null"]},
                    "keep_releases": {"type": "integer", "minimum": 1, "maximum": 100},
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
        "repo": {"type": "string", "minLength": 1, "maxLength": 2048},
        "branch": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    "required": ["repo", "branch"],
    "additionalProperties": False,
}
