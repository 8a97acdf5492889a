"""What the remote commands share (cli.py, cli_plans.py): they talk to a running control
plane through its REST API, found by --url / SERVERFLOW_URL and authenticated by
--token / SERVERFLOW_TOKEN, and print our errors as `Error: [CODE] message` (exit 1)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from serverflow.client import ApiClient
from serverflow.errors import ServerFlowError
from serverflow.settings import load_settings

url_option = click.option(
    "--url", default=None, help="Control plane URL (default: SERVERFLOW_URL or this machine's)."
)
token_option = click.option("--token", default=None, help="API token (default: SERVERFLOW_TOKEN).")


def api_client(url: str | None, token: str | None) -> ApiClient:
    try:
        default = load_settings().base_url
    except ServerFlowError as exc:
        raise click.ClickException(f"[{exc.code}] {exc.message}") from exc
    return ApiClient.from_env(url, token, default)


def remote(func: Callable[..., None]) -> Callable[..., None]:
    """Adds --url and --token; our errors from the API become `Error: [CODE] message`."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except ServerFlowError as exc:
            raise click.ClickException(f"[{exc.code}] {exc.message}") from exc

    return url_option(token_option(wrapper))
