"""A small client for the REST API, used by the CLI's remote commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from serverflow.errors import AuthenticationRequired, NotFound, ServerFlowError


class ApiError(ServerFlowError):
    """An error answer from the API, carrying its code."""


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 120) -> None:
        if not token:
            raise AuthenticationRequired(
                "Set SERVERFLOW_TOKEN (or --token) to an API token; create one with "
                "`serverflow tokens create --name cli --role admin`.",
                code="AUTH001",
            )
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    @classmethod
    def from_env(cls, url: str | None, token: str | None, default_url: str) -> ApiClient:
        return cls(
            url or os.environ.get("SERVERFLOW_URL") or default_url,
            token or os.environ.get("SERVERFLOW_TOKEN"),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerFlowError(
                f"cannot reach the control plane at {self.base_url}: {exc}", code="AGT001"
            ) from exc
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            err = ApiError(
                error.get("message") or response.text[:200],
                code=error.get("code") or f"HTTP{response.status_code}",
            )
            err.status = response.status_code
            raise err
        return body

    def events(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Follow a server-sent event stream: (event, data) pairs until it ends."""
        try:
            with self._http.stream("GET", "/api/v1" + path, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    error = response.json().get("error", {})
                    raise ApiError(
                        error.get("message", response.text[:200]),
                        code=error.get("code", f"HTTP{response.status_code}"),
                    )
                event, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line and data:
                        yield event, json.loads(data)
                        event, data = "message", ""
        except httpx.HTTPError as exc:
            raise ServerFlowError(
                f"lost the control plane at {self.base_url}: {exc}", code="AGT001"
            ) from exc

    def server(self, ref: str) -> dict[str, Any]:
        """A server by name or id."""
        for server in self.request("GET", "/servers")["servers"]:
            if ref in (server["name"], server["id"]):
                return dict(server)
        raise NotFound(f"no server named {ref!r}", code="SRV001")
