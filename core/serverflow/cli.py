"""`serverflow` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import click
from tortoise.exceptions import BaseORMException

from serverflow import __version__, db
from serverflow.cli_remote import api_client, remote
from serverflow.errors import ServerFlowError
from serverflow.logs import configure_logging
from serverflow.models import Role
from serverflow.settings import Settings, load_settings

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ServerFlowError as exc:
        raise click.ClickException(f"[{exc.code}] {exc.message}") from exc


def run_async(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body; our errors become a clean message and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))
        except ServerFlowError as exc:
            raise click.ClickException(f"[{exc.code}] {exc.message}") from exc
        except (BaseORMException, OSError) as exc:
            raise click.ClickException(f"[DB001] database error: {exc}") from exc

    return wrapper


async def _with_db(settings: Settings, body: Callable[[], Awaitable[T]], migrate: bool = True) -> T:
    """Run `body` with the database open, migrated first (so a fresh install just works)."""
    if migrate:
        await db.migrate(settings.database)
    await db.init_orm(settings.database)
    try:
        return await body()
    finally:
        await db.close_orm()


@click.group()
@click.version_option(__version__, prog_name="serverflow")
def main() -> None:
    """ServerFlow: run your own apps on your own servers."""


@main.command()
@run_async
async def migrate() -> None:
    """Apply pending database migrations (keeps existing data)."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    applied = await db.migrate(settings.database)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


async def _first_admin(settings: Settings) -> tuple[str, str] | None:
    """Create the first organisation and owner if there are no users yet."""
    from serverflow.accounts import add_member, create_organization, create_user
    from serverflow.models import User
    from serverflow.passwords import generate_password

    async def body() -> tuple[str, str] | None:
        if await User.exists():
            return None
        email, password = "admin@serverflow.local", generate_password()
        org = await create_organization("Default")
        user = await create_user(email, password, name="Admin")
        await add_member(org, user, Role.OWNER)
        await User.filter(id=user.id).update(is_operator=True)  # manages plugins too
        return email, password

    return await _with_db(settings, body, migrate=False)


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port to listen on (default 8000).")
def up(host: str | None, port: int | None) -> None:
    """Migrate, create the first admin if there is none, and serve the control plane."""
    overrides: dict[str, Any] = {"host": host, "port": port}
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ServerFlowError as exc:
        raise click.ClickException(f"[{exc.code}] {exc.message}") from exc
    configure_logging(settings.log_level, settings.log_format)
    try:
        applied = asyncio.run(db.migrate(settings.database))
        created = asyncio.run(_first_admin(settings))
    except ServerFlowError as exc:
        raise click.ClickException(f"[{exc.code}] {exc.message}") from exc
    if applied:
        click.echo(f"applied {len(applied)} migration(s)", err=True)
    if created:
        email, password = created
        click.echo(
            "\n  First admin account (shown once; change it with "
            "`serverflow users set-password EMAIL`):\n"
            f"    email:    {email}\n    password: {password}\n",
            err=True,
        )
    click.echo(f"ServerFlow is starting on {settings.base_url}", err=True)
    serve(settings)


def serve(settings: Settings) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from hypercorn.utils import LifespanFailureError

    from serverflow.app import create_app

    app = create_app(settings)
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    # Logger objects (not "-") so records go through our redacting handler, once.
    config.accesslog = logging.getLogger("hypercorn.access")
    config.errorlog = logging.getLogger("hypercorn.error")
    config.access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'
    config.graceful_timeout = 5
    config.websocket_max_message_size = 2 * 1024 * 1024  # larger frames: FRM001 from us
    if settings.tls_certfile:
        config.certfile = str(settings.tls_certfile)
        config.keyfile = str(settings.tls_keyfile or settings.tls_certfile)
    try:
        asyncio.run(hypercorn_serve(app, config))
    except LifespanFailureError as exc:
        raise click.ClickException(f"the control plane failed to start: {exc}") from exc


@main.group()
def users() -> None:
    """Manage user accounts."""


@users.command("create")
@click.argument("email")
@click.option("--org", "org_ref", default=None, help="Organisation slug or id to join.")
@click.option("--new-org", default=None, help="Create a new organisation with this name.")
@click.option(
    "--role", type=click.Choice([r.value for r in Role]), default="member", show_default=True
)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--json", "as_json", is_flag=True)
@run_async
async def users_create(
    email: str,
    org_ref: str | None,
    new_org: str | None,
    role: str,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Create a user; prints a generated password once unless --password-stdin."""
    from serverflow.accounts import add_member, create_organization, create_user, get_org
    from serverflow.passwords import generate_password

    settings = _settings()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else generate_password()

    async def body() -> dict[str, Any]:
        if org_ref and new_org:
            raise click.UsageError("use either --org or --new-org")
        org = await create_organization(new_org) if new_org else await get_org(org_ref or "default")
        user = await create_user(email, password)
        await add_member(org, user, Role(role))
        return {"email": user.email, "organization": org.slug, "role": role}

    result = await _with_db(settings, body)
    if not password_stdin:
        result["password"] = password
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"created {result['email']} ({role} of {result['organization']})")
        if not password_stdin:
            click.echo(f"password (shown once): {password}")


@users.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@run_async
async def users_set_password(email: str, password_stdin: bool) -> None:
    """Set a user's password (generated unless --password-stdin); signs out their sessions."""
    from serverflow.accounts import normalize_email, set_password
    from serverflow.errors import NotFound
    from serverflow.models import User
    from serverflow.passwords import generate_password

    settings = _settings()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else generate_password()

    async def body() -> None:
        user = await User.get_or_none(email=normalize_email(email))
        if user is None:
            raise NotFound(f"no user with email {email}", code="USR002")
        await set_password(user, password)

    await _with_db(settings, body)
    click.echo(f"password of {email} changed; their browser sessions were signed out")
    if not password_stdin:
        click.echo(f"new password (shown once): {password}")


def _cli_actor() -> str:
    """Who ran a local command, for the audit log: the host account (it has the database)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@main.group()
def operators() -> None:
    """Instance operators: who manages plugins and the marketplace for every organisation."""


@operators.command("list")
@click.option("--json", "as_json", is_flag=True)
@run_async
async def operators_list(as_json: bool) -> None:
    """List the instance operators."""
    from serverflow import operators as ops

    async def body() -> list[dict[str, Any]]:
        return [{"email": u.email, "name": u.name} for u in await ops.list_operators()]

    rows = await _with_db(_settings(), body)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(row["email"])
    if not rows:
        click.echo("no instance operators: add one with `serverflow operators add EMAIL`")


@operators.command("add")
@click.argument("email")
@run_async
async def operators_add(email: str) -> None:
    """Make an existing user an instance operator (audited in the instance chain)."""
    from serverflow import operators as ops

    user = await _with_db(_settings(), lambda: ops.add(email, _cli_actor()))
    click.echo(f"{user.email} is an instance operator")


@operators.command("remove")
@click.argument("email")
@run_async
async def operators_remove(email: str) -> None:
    """Withdraw a user's instance-operator role (never the last operator's)."""
    from serverflow import operators as ops

    user = await _with_db(_settings(), lambda: ops.remove(email, _cli_actor()))
    click.echo(f"{user.email} is not an instance operator")


@main.group()
def tokens() -> None:
    """Manage API tokens."""


@tokens.command("create")
@click.option(
    "--org", "org_ref", default="default", show_default=True, help="Organisation slug or id."
)
@click.option("--name", required=True, help="What the token is for.")
@click.option(
    "--role", type=click.Choice([r.value for r in Role]), default="member", show_default=True
)
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None)
@click.option(
    "--allow-apply",
    is_flag=True,
    help="MCP: let an assistant using it apply the changes it planned.",
)
@click.option("--operator", is_flag=True, help="Also act as an instance operator (manage plugins).")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--print-token",
    is_flag=True,
    help="Print only the token (for scripts: export SERVERFLOW_TOKEN=$(...)).",
)
@run_async
async def tokens_create(
    org_ref: str,
    name: str,
    role: str,
    expires_in_days: int | None,
    allow_apply: bool,
    operator: bool,
    as_json: bool,
    print_token: bool,
) -> None:
    """Create an API token; its value is printed once and stored only as a hash."""
    from serverflow.accounts import get_org, issue_token

    settings = _settings()

    async def body() -> dict[str, Any]:
        org = await get_org(org_ref)
        issued = await issue_token(
            org.id,
            name,
            Role(role),
            expires_in_days=expires_in_days,
            allow_apply=allow_apply,
            operator=operator,
        )
        if operator:
            from serverflow import audit

            await audit.append(
                audit.INSTANCE,
                audit.Record(
                    _cli_actor(),
                    "token.operator_created",
                    f"token:{issued.token.id}",
                    {"token_id": str(issued.token.id), "token_name": name, "org": org.slug},
                ),
            )
        return {
            "id": str(issued.token.id),
            "name": name,
            "role": role,
            "operator": operator,
            "organization": org.slug,
            "token": issued.value,
        }

    result = await _with_db(settings, body)
    if as_json:
        click.echo(json.dumps(result))
    elif print_token:
        click.echo(result["token"])
    else:
        click.echo(f"token {name!r} ({role} of {result['organization']}), shown once:")
        click.echo(result["token"])


@main.group()
def plugins() -> None:
    """Installed plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True)
def plugins_list(as_json: bool) -> None:
    """List plugins with their version, hooks and status (broken ones show their error)."""
    from serverflow.marketplace import Marketplace
    from serverflow.plugins import Plugins

    settings = _settings()
    configure_logging("CRITICAL", "text")  # errors are shown in the listing itself
    loaded = Plugins(disabled=settings.disabled_plugins)
    Marketplace(settings, loaded).apply_saved_state()  # what the dashboard switched off
    rows = loaded.report()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
    for row in rows:
        provides = ", ".join(f"{k}: {', '.join(v)}" for k, v in row["provides"].items())
        click.echo(f"{row['name']} {row['version'] or ''}  [{row['status']}]")
        click.echo(f"    hooks: {', '.join(row['hooks']) or '-'}")
        if provides:
            click.echo(f"    provides: {provides}")
        if row["error"]:
            click.echo(f"    error: {row['error']}")


# -- remote commands (through the REST API of a running control plane) ---------------


@main.group()
def servers() -> None:
    """Servers and their agents."""


@servers.command("add")
@click.argument("name")
@click.option("--description", default="")
@click.option(
    "--security-mode",
    type=click.Choice(["full", "standard", "read-only"]),
    default="full",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--print-command",
    is_flag=True,
    help="Print only the install command (for scripts: INSTALL=$(...)).",
)
@remote
def servers_add(
    name: str,
    description: str,
    security_mode: str,
    as_json: bool,
    print_command: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Create a server and print the one-line install command for its agent."""
    server = api_client(url, token).request(
        "POST",
        "/servers",
        json={"name": name, "description": description, "security_mode": security_mode},
    )
    if as_json:
        click.echo(json.dumps(server))
        return
    install = server["install"]
    if print_command:
        click.echo(install["command"])
        return
    click.echo(f"server {server['name']} created ({server['id']})")
    click.echo("run this on the server within an hour (the token works once):\n")
    click.echo(f"  {install['command']}\n")


@servers.command("install-token")
@click.argument("server")
@click.option("--json", "as_json", is_flag=True)
@remote
def servers_install_token(server: str, as_json: bool, url: str | None, token: str | None) -> None:
    """A new one-time install command (reinstall; replaces the agent's key on use)."""
    client = api_client(url, token)
    found = client.server(server)
    install = client.request("POST", f"/servers/{found['id']}/install-token")
    click.echo(json.dumps(install) if as_json else install["command"])


@servers.command("list")
@click.option("--json", "as_json", is_flag=True)
@remote
def servers_list(as_json: bool, url: str | None, token: str | None) -> None:
    """Servers with their status."""
    rows = api_client(url, token).request("GET", "/servers")["servers"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no servers; add one with: serverflow servers add NAME")
    for row in rows:
        metrics = row.get("metrics") or {}
        cpu = metrics.get("cpu_percent")
        mem = (metrics.get("memory") or {}).get("percent")
        load = f"cpu {cpu:.0f}% mem {mem:.0f}%" if cpu is not None and mem is not None else ""
        click.echo(
            f"{row['name']:<24} {row['status']:<8} {row['security_mode']:<10} "
            f"{row['last_seen_at'] or 'never':<34} {load}"
        )


@servers.command("actions")
@click.argument("server")
@click.option("--json", "as_json", is_flag=True)
@remote
def servers_actions(server: str, as_json: bool, url: str | None, token: str | None) -> None:
    """The actions a server may run, with their kinds."""
    client = api_client(url, token)
    found = client.server(server)
    result = client.request("GET", f"/servers/{found['id']}/actions")
    if as_json:
        click.echo(json.dumps(result))
        return
    for action in result["actions"]:
        click.echo(f"{action['name']:<28} {action['kind']:<12} {action['description']}")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(raw)  # numbers, booleans, lists...
        except ValueError:
            params[key] = raw
    return params


@main.command("run")
@click.argument("server")
@click.argument("action")
@click.option(
    "--param",
    "-p",
    "pairs",
    multiple=True,
    help="KEY=VALUE (VALUE parsed as JSON when it is, else a string); repeatable.",
)
@click.option("--json", "as_json", is_flag=True)
@remote
def run_command(
    server: str,
    action: str,
    pairs: tuple[str, ...],
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Run an action on a server's agent and print its result."""
    client = api_client(url, token)
    found = client.server(server)
    result = client.request(
        "POST", f"/servers/{found['id']}/actions/{action}", json={"params": _parse_params(pairs)}
    )
    if as_json:
        click.echo(json.dumps(result))
    elif result["status"] == "ok":
        output = result["output"]
        click.echo(json.dumps(output, indent=2) if not isinstance(output, str) else output)
    if result["status"] != "ok":
        raise click.ClickException(
            f"[{result['code'] or result['status']}] {action} on {found['name']}: "
            f"{result['status']}: {result['message'] or ''}"
        )


@main.group()
def apps() -> None:
    """Apps: git repositories deployed to servers."""


@apps.command("create")
@click.argument("name")
@click.option("--server", "servers", multiple=True, required=True, help="Server name; repeatable.")
@click.option("--repo", required=True, help="https://, ssh://, git@host: URL, or a path.")
@click.option("--branch", default=None, help="Branch (default: the repository's default branch).")
@click.option("--domain", "domains", multiple=True, help="Domain to serve; repeatable.")
@click.option("--build", "build", multiple=True, help="Build step (no shell); repeatable.")
@click.option("--start", default=None, help="Start command (no shell); detected if omitted.")
@click.option("--port", type=int, default=None, help="Fixed port (default: one per release).")
@click.option("--env", "env", multiple=True, help="KEY=VALUE; repeatable.")
@click.option("--health-path", default="/", show_default=True)
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP (no certificate).")
@click.option("--runtime", default=None, help="Runtime plugin (default pm2).")
@click.option("--json", "as_json", is_flag=True)
@remote
def apps_create(
    name: str,
    servers: tuple[str, ...],
    repo: str,
    branch: str | None,
    domains: tuple[str, ...],
    build: tuple[str, ...],
    start: str | None,
    port: int | None,
    env: tuple[str, ...],
    health_path: str,
    no_tls: bool,
    runtime: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Create an app; `serverflow deploy NAME --wait` then puts it live."""
    body: dict[str, Any] = {
        "name": name,
        "servers": list(servers),
        "repo": repo,
        "domains": list(domains),
        "env": _parse_env(env),
        "health_path": health_path,
        "tls": not no_tls,
    }
    if build:
        body["build"] = list(build)
    for key, value in (("branch", branch), ("start", start), ("port", port), ("runtime", runtime)):
        if value is not None:
            body[key] = value
    app = api_client(url, token).request("POST", "/apps", json=body)
    if as_json:
        click.echo(json.dumps(app))
    else:
        click.echo(
            f"app {app['name']} created on {', '.join(s['name'] for s in app['servers'])}"
            f"; deploy it with: serverflow deploy {app['name']} --wait"
        )


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


@apps.command("list")
@click.option("--json", "as_json", is_flag=True)
@remote
def apps_list(as_json: bool, url: str | None, token: str | None) -> None:
    """Apps with their servers and URLs."""
    rows = api_client(url, token).request("GET", "/apps")["apps"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        servers = ", ".join(s["name"] for s in row["servers"])
        formation = _formation_shown(row)
        others = row["domains"][1:]  # the first one is the URL's
        click.echo(
            f"{row['name']:<24} {_branch_shown(row):<16} {servers:<24} "
            f"{', '.join(_urls(row)) or '-'}"
            + (f" (also {', '.join(others)})" if others else "")
            + (f"  [{formation}]" if formation else "")
        )


def _urls(app: dict[str, Any]) -> list[str]:
    """The app's URLs, once each (an app with a domain has one on all its servers)."""
    return list(dict.fromkeys(s["url"] for s in app["servers"] if s.get("url")))


def _branch_shown(app: dict[str, Any]) -> str:
    """The app's branch, or "default (master)" when it follows the repository's default."""
    if app.get("branch"):
        return str(app["branch"])
    return f"default ({app['default_branch']})" if app.get("default_branch") else "default"


def _formation_shown(app: dict[str, Any]) -> str:
    return " ".join(f"{kind}={count}" for kind, count in sorted(app["formation"].items()))


def _config_queued(client: Any, app: dict[str, Any], wait: bool) -> None:
    """Say which config deployments put a change live; with `wait`, follow them."""
    deps = app.get("deployments") or []
    if not deps:
        click.echo(f"{app['name']} is not live anywhere: this applies at its next deploy")
        return
    servers = {s["id"]: s["name"] for s in app["servers"]}
    for dep in deps:
        click.echo(
            f"config deployment #{dep['number']} of {dep['commit_sha'][:12]} queued on "
            f"{servers.get(dep['server_id'], dep['server_id'])} ({dep['id']}): "
            "same build, new configuration"
        )
    if not wait:
        click.echo(f"follow: serverflow logs {app['name']} --deploy --follow")
    elif not _follow(client, deps):
        raise click.exceptions.Exit(1)


@apps.command("env")
@click.argument("app")
@click.argument("pairs", nargs=-1)
@click.option("--unset", "unset", multiple=True, help="Variable to remove; repeatable.")
@click.option("--wait", is_flag=True, help="Follow the config deployments; non-zero on failure.")
@remote
def apps_env(
    app: str,
    pairs: tuple[str, ...],
    unset: tuple[str, ...],
    wait: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Show (masked) or set environment variables: `serverflow apps env shop KEY=VALUE`.

    A change goes live at once where the app is live: a config release of the live commit,
    its build reused."""
    client = api_client(url, token)
    if pairs or unset:
        result = client.request(
            "PUT", f"/apps/{app}/env", json={"set": _parse_env(pairs), "unset": list(unset)}
        )
    else:
        result = client.request("GET", f"/apps/{app}")
    for key, value in sorted(result["env"].items()):
        click.echo(f"{key}={value}")
    if pairs or unset:
        _config_queued(client, result, wait)


# What `apps update` prints of each setting (the API's field names).
SETTINGS_SHOWN = (
    "repo",
    "branch",
    "build",
    "start",
    "port",
    "health_path",
    "health_timeout_s",
    "domains",
    "tls",
    "runtime",
    "keep_releases",
)


def _setting_shown(name: str, value: Any) -> str:
    if name == "branch":
        return str(value) if value else "the repository's default branch"
    if name == "build":
        return "; ".join(" ".join(step) for step in value) if value else "detected"
    if name == "start":
        return " ".join(value) if value else "detected"
    if name == "port":
        return "a fresh one per release" if value is None else str(value)
    if name == "domains":
        return ", ".join(value) or "none"
    if name == "tls":
        return "on" if value else "off"
    return str(value)


@apps.command("update")
@click.argument("app")
@click.option("--branch", default=None, help="Follow this branch ('' for the default one).")
@click.option("--default-branch", is_flag=True, help="Follow the repository's default branch.")
@click.option("--build", "build", multiple=True, help="Build step (no shell); repeatable.")
@click.option("--detect-build", is_flag=True, help="Detect the build at deploy again.")
@click.option("--start", default=None, help="Start command (no shell); '': detect.")
@click.option("--detect-start", is_flag=True, help="Detect the start command at deploy again.")
@click.option("--port", type=int, default=None, help="Fixed port.")
@click.option("--health-path", default=None)
@click.option("--health-timeout", type=int, default=None, help="Health check timeout, seconds.")
@click.option("--domain", "domains", multiple=True, help="Domain; repeatable; replaces the list.")
@click.option("--runtime", default=None, help="Runtime plugin.")
@click.option("--tls/--no-tls", default=None, help="HTTPS with a certificate, or plain HTTP.")
@click.option("--keep-releases", type=int, default=None, help="Releases kept for rollbacks.")
@click.option("--json", "as_json", is_flag=True)
@remote
def apps_update(
    app: str,
    branch: str | None,
    default_branch: bool,
    build: tuple[str, ...],
    detect_build: bool,
    start: str | None,
    detect_start: bool,
    port: int | None,
    health_path: str | None,
    health_timeout: int | None,
    domains: tuple[str, ...],
    runtime: str | None,
    tls: bool | None,
    keep_releases: int | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Change an app's settings; they take effect at its next deploy."""
    body: dict[str, Any] = {}
    if default_branch or branch == "":
        body["branch"] = None
    elif branch is not None:
        body["branch"] = branch
    if detect_build or build == ("",):
        body["build"] = None
    elif build:
        body["build"] = list(build)
    if detect_start or start == "":
        body["start"] = None
    elif start is not None:
        body["start"] = start
    if domains:
        body["domains"] = [d for d in domains if d]
    for key, value in (
        ("port", port),
        ("health_path", health_path),
        ("health_timeout_s", health_timeout),
        ("runtime", runtime),
        ("tls", tls),
        ("keep_releases", keep_releases),
    ):
        if value is not None:
            body[key] = value
    if not body:
        raise click.UsageError("nothing to change: give at least one setting (see --help)")
    client = api_client(url, token)
    before = client.request("GET", f"/apps/{app}")
    after = client.request("PATCH", f"/apps/{before['id']}", json=body)
    if as_json:
        click.echo(json.dumps(after))
        return
    changed = [name for name in SETTINGS_SHOWN if before[name] != after[name]]
    if not changed:
        click.echo(f"{after['name']} already has these settings: nothing changed")
        return
    for name in changed:
        click.echo(
            f"{name}: {_setting_shown(name, before[name])} -> {_setting_shown(name, after[name])}"
        )
    click.echo(
        f"{after['name']} updated; it takes effect at the next deploy: "
        f"serverflow deploy {after['name']} --wait"
    )


@apps.command("delete")
@click.argument("app")
@click.confirmation_option(prompt="Stop the app on its servers and delete it?")
@remote
def apps_delete(app: str, url: str | None, token: str | None) -> None:
    """Stop the app everywhere and delete it."""
    api_client(url, token).request("DELETE", f"/apps/{app}")
    click.echo(f"app {app} deleted")


def _follow(client: Any, deployments: list[dict[str, Any]]) -> bool:
    """Print each deployment's log live; True if all ended live."""
    return all(dep.get("status") == "live" for dep in _followed(client, deployments))


def _followed(
    client: Any, deployments: list[dict[str, Any]], err: bool = False
) -> list[dict[str, Any]]:
    """Print each deployment's log live (on stderr with `err`); each one as it ended."""
    finals = []
    for dep in deployments:
        click.echo(f"==> deployment #{dep['number']} ({dep['kind']}) {dep['id']}", err=err)
        final: dict[str, Any] = {}
        for event, data in client.events(f"/deployments/{dep['id']}/logs?follow=true"):
            if event == "log":
                stage = f"[{data['stage']}] " if data.get("stage") else ""
                click.echo(f"{stage}{data['line']}", err=err)
            elif event == "status":
                final = data
        status = final.get("status", "unknown")
        seconds = (final.get("duration_ms") or 0) / 1000
        click.echo(
            f"==> {status} in {seconds:.1f} s"
            + (f": {final['reason']}" if final.get("reason") else ""),
            err=err,
        )
        finals.append({**dep, **final, "status": status})
    return finals


def _with_urls(client: Any, app: str, deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deployments, each with its server's name and the app's URL there (null: none
    yet)."""
    servers = {s["id"]: s for s in client.request("GET", f"/apps/{app}")["servers"]}
    return [
        {
            **dep,
            "server": servers.get(dep["server_id"], {}).get("name"),
            "url": servers.get(dep["server_id"], {}).get("url"),
        }
        for dep in deployments
    ]


def _say_live(client: Any, app: str, deployments: list[dict[str, Any]]) -> None:
    """Where the app is now live: `live: URL`, once per URL."""
    shown = set()
    for dep in _with_urls(client, app, deployments):
        if dep["status"] != "live":
            continue
        if dep["url"] is None:
            click.echo(
                f"live on {dep['server'] or dep['server_id']}, but without a URL there yet: "
                f"the deploy log says why (serverflow logs {app} --deploy)"
            )
        elif dep["url"] not in shown:
            shown.add(dep["url"])
            click.echo(f"live: {dep['url']}")


@main.command("deploy")
@click.argument("app")
@click.option("--commit", default=None, help="Exact commit (default: the branch's head).")
@click.option("--branch", default=None, help="Deploy this branch; the app follows it from now on.")
@click.option("--wait", is_flag=True, help="Follow the logs; exit non-zero on failure.")
@click.option("--json", "as_json", is_flag=True)
@remote
def deploy_command(
    app: str,
    commit: str | None,
    branch: str | None,
    wait: bool,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Deploy an app (on each of its servers)."""
    client = api_client(url, token)
    body = {k: v for k, v in (("commit", commit), ("branch", branch)) if v}
    before = client.request("GET", f"/apps/{app}") if branch else None
    deps = client.request("POST", f"/apps/{app}/deploy", json=body)["deployments"]
    if before is not None and before["branch"] != branch:
        # On stderr with --json: the JSON stays the only thing on stdout.
        click.echo(
            f"{before['name']} now follows branch {branch} (was {_branch_shown(before)})",
            err=as_json,
        )
    if as_json and not wait:
        click.echo(json.dumps(_with_urls(client, app, deps)))
        return
    if not wait:
        for dep in deps:
            click.echo(
                f"deployment {dep['id']} queued; follow: serverflow logs {app} --deploy --follow"
            )
        return
    # With --json the logs go to stderr: the JSON stays the only thing on stdout.
    finals = _followed(client, deps, err=as_json)
    if as_json:
        click.echo(json.dumps(_with_urls(client, app, finals)))
    else:
        _say_live(client, app, finals)
    if not all(dep["status"] == "live" for dep in finals):
        raise click.exceptions.Exit(1)


@main.command("rollback")
@click.argument("app")
@click.option("--to", "release", default=None, help="Release id (default: the previous one).")
@click.option("--wait", is_flag=True)
@remote
def rollback_command(
    app: str, release: str | None, wait: bool, url: str | None, token: str | None
) -> None:
    """Bring back the previous release (kept on the server, not rebuilt)."""
    client = api_client(url, token)
    deps = client.request(
        "POST", f"/apps/{app}/rollback", json={"release": release} if release else {}
    )["deployments"]
    if not wait:
        for dep in deps:
            click.echo(f"rollback {dep['id']} to {dep['release']} queued")
        return
    finals = _followed(client, deps)
    _say_live(client, app, finals)
    if not all(dep["status"] == "live" for dep in finals):
        raise click.exceptions.Exit(1)


def _scale_pairs(pairs: tuple[str, ...]) -> dict[str, int]:
    scale = {}
    for pair in pairs:
        kind, sep, count = pair.partition("=")
        if not sep or not kind or not count.isdigit():
            raise click.BadParameter(f"{pair!r} is not TYPE=COUNT (like worker=2)")
        scale[kind] = int(count)
    return scale


@main.command("ps:scale")
@click.argument("app")
@click.argument("pairs", nargs=-1)
@click.option("--wait", is_flag=True, help="Follow the config deployments; non-zero on failure.")
@click.option("--json", "as_json", is_flag=True)
@remote
def ps_scale(
    app: str,
    pairs: tuple[str, ...],
    wait: bool,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Processes per Procfile type: `serverflow ps:scale shop worker=2 clock=0`.

    Types other than web run 1 process unless scaled (0 to 20). Applies at once where the
    app is live (a config release, no rebuild); without TYPE=COUNT, shows the formation."""
    client = api_client(url, token)
    if not pairs:
        shown = client.request("GET", f"/apps/{app}")
        if as_json:
            click.echo(json.dumps(shown["formation"]))
        else:
            click.echo(
                _formation_shown(shown) or "web=1, and 1 of each other Procfile process type"
            )
        return
    result = client.request("PUT", f"/apps/{app}/formation", json={"scale": _scale_pairs(pairs)})
    if as_json and not wait:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['name']}: {_formation_shown(result)}")
    _config_queued(client, result, wait)


@main.command("deployments")
@click.argument("app")
@click.option("--json", "as_json", is_flag=True)
@remote
def deployments_command(app: str, as_json: bool, url: str | None, token: str | None) -> None:
    """An app's deployment history."""
    rows = api_client(url, token).request("GET", f"/apps/{app}/deployments")["deployments"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        took = f"{row['duration_ms'] / 1000:.1f}s" if row["duration_ms"] else "-"
        click.echo(
            f"#{row['number']:<4} {row['kind']:<9} {row['status']:<10} "
            f"{(row['release'] or '-'):<14} {took:>7}  {row['triggered_by']}"
            + (f"  {row['reason']}" if row["reason"] else "")
        )


def _app_log_line(line: dict[str, Any], with_server: bool) -> str:
    """`web r3-abc1234 | listening on 4001` (worker.2 for the second worker)."""
    process = line["type"] + (f".{line['index']}" if line["index"] > 1 else "")
    server = f"{line['server']} " if with_server else ""
    return f"{server}{process} {line['release']} | {line['line']}"


def _notice(data: dict[str, Any]) -> None:
    where = f"{data['server']}: " if data.get("server") else ""
    code = f"[{data['code']}] " if data.get("code") else ""
    click.echo(f"-- {where}{code}{data['message']}", err=True)


def _deploy_log(client: Any, app: str, follow: bool, lines: int | None) -> None:
    rows = client.request("GET", f"/apps/{app}/deployments")["deployments"]
    if not rows:
        raise click.ClickException(f"{app} has no deployments yet")
    latest = rows[0]
    if follow:
        _follow(client, [latest])
        return
    shown = client.request("GET", f"/deployments/{latest['id']}/logs")["lines"]
    for line in shown[-lines:] if lines else shown:
        stage = f"[{line['stage']}] " if line["stage"] else ""
        click.echo(f"{stage}{line['line']}")


@main.command("logs")
@click.argument("app")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--deploy", is_flag=True, help="The latest deployment's log instead.")
@click.option(
    "--lines", "-n", type=click.IntRange(1, 1000), default=None, help="How many (default 100)."
)
@click.option("--json", "as_json", is_flag=True, help="JSON (with --follow: one line each).")
@remote
def logs_command(
    app: str,
    follow: bool,
    deploy: bool,
    lines: int | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """What the app's processes print (stdout and stderr) on its servers, each line
    prefixed by its process type and release; --deploy: the latest deployment's log."""
    client = api_client(url, token)
    if deploy:
        _deploy_log(client, app, follow, lines)
        return
    query = f"/apps/{app}/logs?lines={lines or 100}"
    if not follow:
        answer = client.request("GET", query)
        if as_json:
            click.echo(json.dumps(answer))
            return
        several = len({line["server"] for line in answer["lines"]}) > 1
        for line in answer["lines"]:
            click.echo(_app_log_line(line, several))
        for problem in answer["problems"]:
            _notice(problem)
        return
    servers = client.request("GET", f"/apps/{app}")["servers"]
    try:
        for event, data in client.events(query + "&follow=true"):
            if as_json:
                click.echo(json.dumps({"event": event, **data}))
            elif event == "log":
                click.echo(_app_log_line(data, len(servers) > 1))
            elif event == "notice":
                _notice(data)
    except KeyboardInterrupt:  # how a follow ends
        return


@main.group()
def keys() -> None:
    """The control plane's command-signing keys."""


@keys.command("rotate")
@run_async
async def keys_rotate() -> None:
    """Make a new signing key; connected agents switch to it (announced by the old key)."""
    from serverflow.keys import AppKeys
    from serverflow.signing import rotate

    settings = _settings()
    cipher = AppKeys(settings.secrets_dir).cipher

    async def body() -> str:
        return (await rotate(cipher)).key_id

    key_id = await _with_db(settings, body)
    click.echo(f"new signing key {key_id}; running control planes announce it to agents")


@keys.command("list")
@run_async
async def keys_list() -> None:
    """Signing keys, newest first (the current one is not retired)."""
    from serverflow.models import SigningKey
    from serverflow_contract.protocol import key_id

    async def body() -> list[SigningKey]:
        return list(await SigningKey.all().order_by("-id"))

    for row in await _with_db(_settings(), body):
        state = f"retired {row.retired_at:%Y-%m-%d %H:%M}" if row.retired_at else "current"
        click.echo(f"{key_id(row.public_key)}  {state}  created {row.created_at:%Y-%m-%d %H:%M}")


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify")
@click.option(
    "--org",
    "org_ref",
    default=None,
    help="Organisation slug or id, or `instance` (default: the instance's chain and every "
    "organisation's).",
)
@click.option("--json", "as_json", is_flag=True)
@run_async
async def audit_verify(org_ref: str | None, as_json: bool) -> None:
    """Check every hash chain; exit 1 and name the first broken entry if one is."""
    from serverflow import audit
    from serverflow.accounts import get_org

    async def body() -> list[Any]:
        if org_ref == "instance":
            return await audit.verify_all([audit.INSTANCE])
        orgs = [(await get_org(org_ref)).id] if org_ref else None
        return await audit.verify_all(orgs)

    verdicts = await _with_db(_settings(), body)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "organization_id": audit.chain_name(v.org_id),
                        "entries": v.entries,
                        "ok": v.ok,
                        "broken_seq": v.broken_seq,
                        "broken_id": v.broken_id,
                        "problem": v.problem,
                    }
                    for v in verdicts
                ]
            )
        )
    for verdict in verdicts:
        if verdict.ok and not as_json:
            click.echo(f"ok      {audit.chain_name(verdict.org_id)}: {verdict.entries} entries")
        elif not verdict.ok:
            click.echo(
                f"BROKEN  {audit.chain_name(verdict.org_id)}: entry #{verdict.broken_seq} "
                f"(row id {verdict.broken_id}): {verdict.problem}",
                err=True,
            )
    if not all(v.ok for v in verdicts):
        raise click.exceptions.Exit(1)


@audit_group.command("export")
@click.option(
    "--org", "org_ref", default="default", show_default=True, help="Slug or id, or `instance`."
)
@click.option("--since", default=None, help="ISO date or datetime, e.g. 2026-11-01.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-")
@run_async
async def audit_export(org_ref: str, since: str | None, output: str) -> None:
    """Write the audit log as JSON lines."""
    from datetime import UTC, datetime

    from serverflow import audit
    from serverflow.accounts import get_org

    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError as exc:
            raise click.BadParameter(f"{since!r} is not an ISO date", param_hint="--since") from exc
        start = start if start.tzinfo else start.replace(tzinfo=UTC)

    async def body() -> list[dict[str, Any]]:
        chain = audit.INSTANCE if org_ref == "instance" else (await get_org(org_ref)).id
        return [row async for row in audit.export(chain, start)]

    rows = await _with_db(_settings(), body)
    with click.open_file(output, "w") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")


@main.group()
def config() -> None:
    """Effective configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
def config_show(as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    shown = _settings().shown()
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        click.echo(f"{key} = {value}")


from serverflow.cli_plans import plans  # noqa: E402

main.add_command(plans)

from serverflow.install import install_command  # noqa: E402

main.add_command(install_command)
