"""Git push webhooks from GitHub (HMAC signature) and GitLab (shared token)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Protocol

from serverflow.errors import AuthenticationRequired, InvalidInput, ServerFlowError

log = logging.getLogger(__name__)

SHA = re.compile(r"^[0-9a-f]{40}$")
ZERO = "0" * 40


class Headers(Protocol):
    """Case-insensitive header lookup (werkzeug's Headers)."""

    def get(self, key: str, default: str) -> str: ...


@dataclass(frozen=True)
class Push:
    branch: str
    commit: str
    default_branch: str | None = None  # the repository's, as the payload says


class WebhookError(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def log(self, provider: str, app: str) -> None:
        log.warning(
            "%s webhook for %s refused: %s %s",
            provider,
            app,
            self.code,
            self.message,
            extra={"code": self.code},
        )

    def as_http(self) -> ServerFlowError:
        if self.status == 401:
            return AuthenticationRequired(self.message, code=self.code)
        return InvalidInput(self.message, code=self.code)


def _bad_signature(what: str) -> WebhookError:
    return WebhookError("HOOK001", f"{what}: nothing was deployed", 401)


def _payload(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise WebhookError("HOOK002", "the webhook body is not JSON", 400) from None
    if not isinstance(data, dict):
        raise WebhookError("HOOK002", "the webhook body is not a JSON object", 400)
    return data


def _push(ref: object, commit: object, repository: object = None) -> Push | None:
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return None  # a tag, or something else: not a branch push
    if not isinstance(commit, str) or not SHA.match(commit) or commit == ZERO:
        return None  # a deleted branch
    default = repository.get("default_branch") if isinstance(repository, dict) else None
    return Push(
        branch=ref[len("refs/heads/") :],
        commit=commit,
        default_branch=default if isinstance(default, str) and default else None,
    )


def github_push(headers: Headers, body: bytes, secret: str) -> Push | None:
    """Verify `X-Hub-Signature-256` over the raw body; the push, or None for other events."""
    signature = headers.get("X-Hub-Signature-256", "")
    if not signature.startswith("sha256="):
        raise _bad_signature("missing X-Hub-Signature-256")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature[len("sha256=") :], expected):
        raise _bad_signature("X-Hub-Signature-256 does not match")
    if headers.get("X-GitHub-Event", "push") != "push":
        return None
    data = _payload(body)
    return _push(data.get("ref"), data.get("after"), data.get("repository"))


def gitlab_push(headers: Headers, body: bytes, secret: str) -> Push | None:
    """Verify `X-Gitlab-Token`; the push, or None for other events."""
    token = headers.get("X-Gitlab-Token", "")
    if not token or not hmac.compare_digest(token.encode(), secret.encode()):
        raise _bad_signature("X-Gitlab-Token is missing or wrong")
    if headers.get("X-Gitlab-Event", "Push Hook") != "Push Hook":
        return None
    data = _payload(body)
    return _push(
        data.get("ref"), data.get("checkout_sha") or data.get("after"), data.get("project")
    )


def hook_urls(base_url: str, org_id: uuid.UUID, app_id: uuid.UUID) -> tuple[str, str]:
    root = f"{base_url}/api/v1/hooks/{org_id}/{app_id}"
    return f"{root}/github", f"{root}/gitlab"
