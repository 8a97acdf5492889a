"""Logging to stderr, as text or JSON lines, with secrets redacted from every record."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

# API tokens, session cookies, Authorization headers and password fields.
_PATTERNS = [
    (re.compile(r"(sfi?_)[0-9a-f]{32}_[A-Za-z0-9_\-]{16,}"), r"\1********"),
    (re.compile(r"(?i)(authorization:?\s*(?:bearer|basic)\s+)\S+"), r"\1********"),
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|api_key)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
        ),
        r"\1********",
    ),
    (re.compile(r"(?i)(serverflow_session=)[^;\s]+"), r"\1********"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("code", "path", "method", "status", "principal"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("tortoise", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("hypercorn.error", "hypercorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
