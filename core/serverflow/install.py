"""`serverflow install`: a production control plane on a Debian/Ubuntu server, or an
in-place upgrade of one.

Run as root by `scripts/install`, which first puts ServerFlow into its own venv. It
creates a system user and its data directory, writes the configuration
(/etc/serverflow/serverflow.toml), backs the database up before migrating an existing
install, creates the first admin once, installs a hardened systemd unit (or, where PID 1
is not systemd, starts the service in the background and says so), puts nginx in front
with HTTPS (an ACME certificate for --domain, or the operator's own), and prints the URL,
the admin account (once) and the next command.

Every step is idempotent: re-running it with the same options changes nothing but the
installed version; options given again replace the recorded ones, options left out keep
them.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from serverflow import __version__
from serverflow.settings import mask_url

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
SYSTEMD_UNIT = "serverflow.service"
STATE_FILE = "install.json"  # in the data dir: what was installed, for upgrades
USER_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")  # a system user and a PostgreSQL role


class InstallError(click.ClickException):
    """A step failed: the message says which and what to do; nothing after it ran."""


@dataclass(frozen=True)
class Layout:
    prefix: Path
    config_dir: Path
    data_dir: Path
    bin_dir: Path
    log_dir: Path
    user: str
    systemd_dir: Path = Path("/etc/systemd/system")
    nginx_conf: Path = Path("/etc/nginx/conf.d/serverflow-control-plane.conf")
    acme_webroot: Path = Path("/var/www/serverflow-acme")

    @property
    def config_file(self) -> Path:
        return self.config_dir / "serverflow.toml"

    @property
    def tls_dir(self) -> Path:
        return self.config_dir / "tls"

    @property
    def backups(self) -> Path:
        return self.data_dir / "backups"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "control-plane.pid"

    @property
    def executable(self) -> Path:
        return self.prefix / "venv" / "bin" / "serverflow"


def step(message: str) -> None:
    click.echo(f"==> {message}")


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 when /run/systemd/system exists (not when systemctl
    merely exists: containers and chroots often have it without running it)."""
    return Path("/run/systemd/system").is_dir()


def run(argv: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output's tail and what it was for."""
    done = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        shown = " ".join(mask_url(a) if "://" in a else a for a in argv)
        raise InstallError(f"{what} failed (exit {done.returncode}): {shown}\n{tail}")
    return done


def apt_install(packages: Sequence[str]) -> None:
    wanted = [p for p in packages if not _installed(p)]
    if not wanted:
        return
    if shutil.which("apt-get") is None:
        raise InstallError(f"install these packages first: {' '.join(wanted)} (no apt-get here)")
    step(f"Installing {' '.join(wanted)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    run(["apt-get", "install", "-y", "-qq", *wanted], "apt-get install", env=env)


def _installed(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return done.returncode == 0 and "install ok installed" in done.stdout


# -- the service user and its files ----------------------------------------------------


def ensure_user(layout: Layout) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(layout.user)
    except KeyError:
        step(f"Creating the system user {layout.user}")
        run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                str(layout.data_dir),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                layout.user,
            ],
            "creating the user",
        )
        entry = pwd.getpwnam(layout.user)
    return entry.pw_uid, entry.pw_gid


def ensure_dirs(layout: Layout, uid: int, gid: int) -> None:
    for path, mode, owner in (
        (layout.config_dir, 0o750, (0, gid)),
        (layout.data_dir, 0o750, (uid, gid)),
        (layout.backups, 0o700, (uid, gid)),
        (layout.log_dir, 0o750, (uid, gid)),
    ):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, *owner)
        path.chmod(mode)


def write_file(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> bool:
    """Write atomically; whether the content changed."""
    if path.exists() and path.read_text() == text:
        os.chown(path, *owner)
        path.chmod(mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.chown(partial, *owner)
    partial.chmod(mode)
    partial.replace(path)
    return True


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Files the installer made as root in the data dir belong to the service user."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(path, uid, gid)


# -- configuration ---------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open("rb") as fp:
        return tomllib.load(fp)


def render_config(values: dict[str, Any]) -> str:
    lines = [
        "# ServerFlow control plane, written by `serverflow install` (re-running it keeps",
        "# what is here unless told otherwise). Every setting: the README's Configuration.",
    ]
    for key, value in values.items():
        if isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(json.dumps(str(v)) for v in value)}]")
        elif isinstance(value, bool | int):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def guess_address() -> str:
    """This server's address as others would reach it: the source address of a route out."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address: str = probe.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


# -- database --------------------------------------------------------------------------


def local_postgres(layout: Layout) -> str:
    """A local PostgreSQL with a role that is neither superuser nor BYPASSRLS (row-level
    security must apply to it); the database URL."""
    apt_install(["postgresql"])
    if systemd_running():
        run(["systemctl", "enable", "--now", "postgresql"], "starting PostgreSQL")
    clusters = run(["pg_lsclusters", "--no-header"], "listing PostgreSQL clusters").stdout
    if not clusters.strip():
        raise InstallError("no PostgreSQL cluster here: create one with pg_createcluster 15 main")
    version, name, port, status = clusters.split()[:4]  # the first cluster: Debian's default
    if status != "online":
        step(f"Starting PostgreSQL {version}/{name}")
        run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
            "starting PostgreSQL",
        )
    password = secrets.token_urlsafe(24)
    role = layout.user

    def psql(sql: str) -> str:
        return run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-XtA",
                "-v",
                "ON_ERROR_STOP=1",
                "-p",
                port,
                "-c",
                sql,
            ],
            "PostgreSQL",
            cwd="/",
        ).stdout.strip()

    step(f"PostgreSQL: role {role} (NOSUPERUSER NOBYPASSRLS) and database {role}")
    # role matches USER_NAME (checked at start) and password is URL-safe base64: neither
    # can carry a quote, so the statements below are not injectable.
    if psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'") == "1":  # noqa: S608
        psql(f"ALTER ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS")
    else:
        psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS")
    if psql(f"SELECT 1 FROM pg_database WHERE datname = '{role}'") != "1":  # noqa: S608
        psql(f"CREATE DATABASE {role} OWNER {role}")
    return f"postgres://{role}:{password}@127.0.0.1:{port}/{role}"


def pg_dump_argv(url: str, local: bool) -> list[str]:
    """pg_dump of the control plane's database. Its rows are guarded by row-level security
    that its own role cannot bypass (by design), and pg_dump refuses to dump such a table:
    the dump runs as a role that may, PostgreSQL's superuser for the local database."""
    parts = urlsplit(url)
    if not local:
        raise InstallError(
            "a backup of an external PostgreSQL database needs a role that bypasses row-level "
            "security (the control plane's own cannot): take a dump with one (pg_dump -Fc) "
            "and re-run with --skip-backup"
        )
    database = parts.path.lstrip("/")
    port = str(parts.port or 5432)
    return ["runuser", "-u", "postgres", "--", "pg_dump", "-p", port, "--format=custom", database]


def backup(
    layout: Layout, settings: Any, previous: str, uid: int, gid: int, local: bool = True
) -> Path | None:
    """A copy of the database taken before migrating; its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if settings.dialect == "sqlite":
        source = Path(settings.database.removeprefix("sqlite://"))
        if not source.exists():
            return None
        target = layout.backups / f"serverflow-{previous}-{stamp}.sqlite3"
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)  # consistent even if something still had it open
    else:
        target = layout.backups / f"serverflow-{previous}-{stamp}.dump"
        with target.open("wb") as out:
            done = subprocess.run(
                pg_dump_argv(settings.database, local), stdout=out, stderr=subprocess.PIPE
            )
        if done.returncode != 0:
            target.unlink()
            raise InstallError(
                "pg_dump failed, so nothing was upgraded: "
                f"{done.stderr.decode(errors='replace')[-1500:]}"
            )
    os.chown(target, uid, gid)
    target.chmod(0o600)
    return target


def migrate_and_first_admin(settings: Any) -> tuple[int, tuple[str, str] | None]:
    from serverflow import db
    from serverflow.cli import _first_admin

    applied = asyncio.run(db.migrate(settings.database))
    return len(applied), asyncio.run(_first_admin(settings))


# -- TLS and nginx ---------------------------------------------------------------------

PROXY = """    location / {{
        proxy_pass http://127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        # Agents' channel and the dashboard's live events: WebSocket upgrades, long reads.
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $serverflow_connection;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
        proxy_buffering off;
        client_max_body_size 25m;
    }}
"""


def render_nginx(server_name: str, port: int, webroot: Path, cert: tuple[Path, Path] | None) -> str:
    head = (
        "# The ServerFlow control plane, written by `serverflow install` (rewritten on\n"
        "# every run: change the install's options, not this file).\n"
        "map $http_upgrade $serverflow_connection { default upgrade; '' ''; }\n\n"
    )
    default = " default_server" if server_name == "_" else ""
    acme = f"    location /.well-known/acme-challenge/ {{ root {webroot}; }}\n"
    http_body = (
        "    location / { return 301 https://$host$request_uri; }\n"
        if cert
        else PROXY.format(port=port)
    )
    text = (
        head
        + "server {\n"
        + f"    listen 80{default};\n    listen [::]:80{default};\n"
        + f"    server_name {server_name};\n"
        + acme
        + http_body
        + "}\n"
    )
    if cert:
        text += (
            "\nserver {\n"
            f"    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n"
            f"    server_name {server_name};\n"
            f"    ssl_certificate {cert[0]};\n    ssl_certificate_key {cert[1]};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    ssl_session_cache shared:serverflow:10m;\n"
            '    add_header Strict-Transport-Security "max-age=31536000" always;\n'
            + PROXY.format(port=port)
            + "}\n"
        )
    return text


def nginx_apply(layout: Layout, text: str) -> None:
    """Write the site, check the whole configuration, then (re)load nginx."""
    old = layout.nginx_conf.read_text() if layout.nginx_conf.exists() else None
    write_file(layout.nginx_conf, text)
    check = subprocess.run(["nginx", "-t"], capture_output=True, text=True)
    if check.returncode != 0:
        if old is None:
            layout.nginx_conf.unlink()
        else:
            write_file(layout.nginx_conf, old)
        raise InstallError(f"nginx refused the configuration (previous one kept):\n{check.stderr}")
    if systemd_running():
        run(["systemctl", "enable", "nginx"], "enabling nginx")
        run(["systemctl", "reload-or-restart", "nginx"], "reloading nginx")
    elif _nginx_running():
        run(["nginx", "-s", "reload"], "reloading nginx")
    else:
        run(["nginx"], "starting nginx")


def _nginx_running() -> bool:
    pidfile = Path("/run/nginx.pid")
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def acme_certificate(
    domain: str, email: str, server: str, ca_bundle: Path | None, webroot: Path
) -> tuple[Path, Path]:
    live = Path("/etc/letsencrypt/live") / domain
    if (live / "fullchain.pem").exists():
        step(f"Certificate for {domain}: already in {live} (certbot renews it)")
        return live / "fullchain.pem", live / "privkey.pem"
    apt_install(["certbot"])
    step(f"Asking {urlsplit(server).netloc} for a certificate for {domain} (ACME HTTP-01)")
    env = dict(os.environ)
    if ca_bundle:
        env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)
    argv = [
        "certbot",
        "certonly",
        "--webroot",
        "-w",
        str(webroot),
        "-d",
        domain,
        "--server",
        server,
        "--non-interactive",
        "--agree-tos",
        "--keep-until-expiring",
        "--deploy-hook",
        "nginx -s reload",
        *(["--email", email] if email else ["--register-unsafely-without-email"]),
    ]
    run(argv, f"getting a certificate for {domain} (is {domain} pointing at this server?)", env=env)
    return live / "fullchain.pem", live / "privkey.pem"


def own_certificate(layout: Layout, cert: Path, key: Path) -> tuple[Path, Path]:
    for path in (cert, key):
        if not path.is_file():
            raise InstallError(f"{path} does not exist")
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise InstallError(f"{cert} and {key} are not a certificate and its key: {exc}") from exc
    layout.tls_dir.mkdir(mode=0o700, exist_ok=True)
    chain, private = layout.tls_dir / "fullchain.pem", layout.tls_dir / "privkey.pem"
    write_file(chain, cert.read_text(), 0o644)
    write_file(private, key.read_text(), 0o600)
    return chain, private


# -- the service -----------------------------------------------------------------------


def render_unit(layout: Layout) -> str:
    return f"""# The ServerFlow control plane, written by `serverflow install`.
[Unit]
Description=ServerFlow control plane
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
Type=exec
User={layout.user}
Group={layout.user}
Environment=SERVERFLOW_CONFIG={layout.config_file}
ExecStart={layout.executable} up
Restart=on-failure
RestartSec=3
TimeoutStopSec=20
UMask=0027
# Hardening: the service writes its data directory and its logs, nothing else.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={layout.data_dir} {layout.log_dir}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def render_wrapper(layout: Layout) -> str:
    return f"""#!/bin/sh
# The ServerFlow CLI with this server's configuration, written by `serverflow install`.
# As root it runs as {layout.user}, so that files it makes belong to the service.
CONFIG={layout.config_file}
if [ -z "${{SERVERFLOW_CONFIG:-}}" ] && [ -r "$CONFIG" ]; then
  export SERVERFLOW_CONFIG="$CONFIG"
fi
if [ "$(id -u)" = 0 ] && [ "${{1:-}}" != install ]; then
  exec runuser -u {layout.user} -- env SERVERFLOW_CONFIG="$CONFIG" {layout.executable} "$@"
fi
exec {layout.executable} "$@"
"""


def stop_background(layout: Layout) -> None:
    """Stop the service started without systemd (its pidfile's process, if it is ours)."""
    try:
        pid = int(layout.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not any(part.endswith(b"serverflow") for part in cmdline) or b"up" not in cmdline:
        return  # the pid was reused by something else: not ours to stop
    step(f"Stopping the running control plane (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            break
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def start_background(layout: Layout, uid: int, gid: int) -> int:
    log = layout.log_dir / "control-plane.log"
    out = log.open("ab")
    os.chown(log, uid, gid)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(layout.data_dir),
        "LANG": "C.UTF-8",
        "SERVERFLOW_CONFIG": str(layout.config_file),
    }
    process = subprocess.Popen(
        [str(layout.executable), "up"],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        env=env,
        cwd=str(layout.data_dir),
        user=uid,
        group=gid,
        extra_groups=[],
        start_new_session=True,
    )
    write_file(layout.pidfile, f"{process.pid}\n", 0o644, (uid, gid))
    return process.pid


def wait_ready(port: int, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise InstallError(f"the control plane did not become ready on 127.0.0.1:{port}: {last}")


# -- the command -----------------------------------------------------------------------


@click.command("install")
@click.option("--domain", default=None, help="Domain of the dashboard and agent endpoint (HTTPS).")
@click.option("--email", default=None, help="E-mail for the ACME account (expiry notices).")
@click.option("--acme-server", default=None, help=f"ACME directory URL (default {LETS_ENCRYPT}).")
@click.option(
    "--acme-ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Trust this CA for the ACME server (a private CA such as pebble).",
)
@click.option(
    "--cert",
    type=click.Path(path_type=Path),
    default=None,
    help="Your own certificate (PEM chain).",
)
@click.option("--key", type=click.Path(path_type=Path), default=None, help="Its private key (PEM).")
@click.option(
    "--no-tls", is_flag=True, help="Plain HTTP on port 80 (no domain needed; not for the internet)."
)
@click.option(
    "--skip-backup", is_flag=True, help="Upgrade without the database backup (you took one)."
)
@click.option(
    "--postgres", is_flag=True, help="Install PostgreSQL here and use it (default: SQLite)."
)
@click.option("--database-url", default=None, help="Use this PostgreSQL database instead.")
@click.option(
    "--public-url", default=None, help="The URL users and agents reach (default from --domain)."
)
@click.option(
    "--port",
    type=int,
    default=None,
    help="Internal port of the service behind nginx (default 8000).",
)
@click.option(
    "--prefix", type=click.Path(path_type=Path), default=Path("/opt/serverflow"), show_default=True
)
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=Path("/etc/serverflow"),
    show_default=True,
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/serverflow"),
    show_default=True,
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    default=Path("/var/log/serverflow"),
    show_default=True,
)
@click.option(
    "--bin-dir", type=click.Path(path_type=Path), default=Path("/usr/local/bin"), show_default=True
)
@click.option(
    "--user", default="serverflow", show_default=True, help="The system user of the service."
)
def install_command(
    domain: str | None,
    email: str | None,
    acme_server: str | None,
    acme_ca_bundle: Path | None,
    cert: Path | None,
    key: Path | None,
    no_tls: bool,
    skip_backup: bool,
    postgres: bool,
    database_url: str | None,
    public_url: str | None,
    port: int | None,
    prefix: Path,
    config_dir: Path,
    data_dir: Path,
    log_dir: Path,
    bin_dir: Path,
    user: str,
) -> None:
    """Install the control plane as a service on this server, or upgrade it in place.

    Run by scripts/install (as root), which installs ServerFlow into PREFIX/venv first.
    """
    if os.geteuid() != 0:
        raise InstallError("run it as root (sudo ./scripts/install ...)")
    if (cert is None) != (key is None):
        raise InstallError("--cert and --key go together")
    if not USER_NAME.match(user):
        raise InstallError(f"--user {user!r}: lower-case letters, digits and _ only")
    if postgres and database_url:
        raise InstallError("--postgres and --database-url exclude each other")
    layout = Layout(prefix.resolve(), config_dir, data_dir, bin_dir, log_dir, user)
    if not layout.executable.exists():
        raise InstallError(f"{layout.executable} is missing: run scripts/install, not this command")
    recorded = read_config(layout.config_file)
    state_path = layout.data_dir / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    upgrading = bool(recorded)

    # What this run serves: options given now, else what the previous run recorded.
    if no_tls:
        tls = "none"
    elif cert:
        tls = "own"
    elif domain is None and state.get("tls"):
        tls = state["tls"]
    else:
        tls = "acme"
    domain = domain or state.get("domain")
    if not domain and tls != "none":
        raise InstallError("HTTPS needs --domain NAME (or --no-tls for plain HTTP)")
    port = port or int(recorded.get("port", 8000))

    doing = (
        f"upgrading {state.get('version', 'an earlier version')} to" if upgrading else "installing"
    )
    click.echo(
        f"ServerFlow: {doing} {__version__}, control plane{' for ' + domain if domain else ''}"
    )
    apt_install(["nginx", *(["certbot"] if tls == "acme" else [])])
    uid, gid = ensure_user(layout)
    ensure_dirs(layout, uid, gid)

    values = dict(recorded)
    values.update(data_dir=str(layout.data_dir), host="127.0.0.1", port=port)
    values["trusted_proxies"] = ["127.0.0.1", "::1"]  # nginx, in front
    scheme = "http" if tls == "none" else "https"
    values["public_url"] = (
        public_url
        or (f"{scheme}://{domain}" if domain else None)
        or recorded.get("public_url")
        or f"http://{guess_address()}"
    )
    if database_url:
        values["database_url"] = database_url
        state["postgres"] = "external"
    elif postgres and not str(recorded.get("database_url", "")).startswith("postgres"):
        values["database_url"] = local_postgres(layout)
        state["postgres"] = "local"
    write_file(layout.config_file, render_config(values), 0o640, (0, gid))

    from serverflow.settings import load_settings

    settings = load_settings(environ={"SERVERFLOW_CONFIG": str(layout.config_file)})

    local_pg = state.get("postgres") == "local"
    take_backup = upgrading and not skip_backup
    if take_backup and settings.dialect == "postgres":  # checked before anything is stopped
        pg_dump_argv(settings.database, local_pg)
        if shutil.which("pg_dump") is None:
            apt_install(["postgresql-client"])
    if systemd_running():
        if upgrading:
            subprocess.run(["systemctl", "stop", SYSTEMD_UNIT], capture_output=True)
    else:
        stop_background(layout)
    saved = None
    if take_backup:
        previous = state.get("version", "unknown")
        saved = backup(layout, settings, previous, uid, gid, local_pg)
        if saved:
            step(f"Backed the database up before migrating: {saved}")
    step("Applying database migrations")
    try:
        applied, admin = migrate_and_first_admin(settings)
    except Exception as exc:
        hint = f" The backup taken before: {saved}." if saved else ""
        raise InstallError(f"migrations failed: {exc}.{hint}") from exc
    chown_tree(layout.data_dir, uid, gid)
    if applied:
        step(f"Applied {applied} migration(s)")

    write_file(layout.bin_dir / "serverflow", render_wrapper(layout), 0o755)

    # nginx in front: HTTP first (the ACME challenge needs it), then HTTPS.
    layout.acme_webroot.mkdir(parents=True, exist_ok=True)
    layout.acme_webroot.chmod(0o755)
    server_name = domain or "_"
    if server_name == "_":
        _disable_default_site()
    certificate: tuple[Path, Path] | None = None
    if tls == "own":
        if cert and key:
            certificate = own_certificate(layout, cert, key)
        else:
            certificate = (layout.tls_dir / "fullchain.pem", layout.tls_dir / "privkey.pem")
    elif tls == "acme":
        assert domain
        nginx_apply(layout, render_nginx(server_name, port, layout.acme_webroot, None))
        certificate = acme_certificate(
            domain,
            email or state.get("email", ""),
            acme_server or state.get("acme_server") or LETS_ENCRYPT,
            acme_ca_bundle,
            layout.acme_webroot,
        )
    step("Configuring nginx in front of the control plane")
    nginx_apply(layout, render_nginx(server_name, port, layout.acme_webroot, certificate))

    unit = layout.systemd_dir / SYSTEMD_UNIT
    write_file(unit, render_unit(layout))
    if systemd_running():
        step(f"Starting {SYSTEMD_UNIT} (systemd; restarts on failure, starts at boot)")
        run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
        run(["systemctl", "enable", SYSTEMD_UNIT], "enabling the service")
        run(["systemctl", "restart", SYSTEMD_UNIT], "starting the service")
    else:
        pid = start_background(layout, uid, gid)
        step(
            f"Started the control plane in the background (pid {pid}, log "
            f"{layout.log_dir / 'control-plane.log'}): systemd is not PID 1 here, so it "
            f"will not start at boot; {unit} is written for when it is"
        )
    wait_ready(port)

    state.update(
        version=__version__,
        domain=domain,
        tls=tls,
        email=email or state.get("email", ""),
        acme_server=acme_server or state.get("acme_server", ""),
        installed_at=state.get("installed_at") or datetime.now(UTC).isoformat(),
        upgraded_at=datetime.now(UTC).isoformat(),
    )
    write_file(state_path, json.dumps(state, indent=2) + "\n", 0o640, (uid, gid))

    url = settings.base_url
    click.echo("")
    if upgrading:
        click.echo(f"ServerFlow upgraded to {__version__}: {url} (data kept; backup {saved})")
    else:
        click.echo(f"ServerFlow {__version__} is running: {url}")
    if admin:
        email_, password = admin
        click.echo(
            "\n  First admin account (shown once; change it with "
            "`serverflow users set-password EMAIL`):\n"
            f"    email:    {email_}\n    password: {password}\n"
        )
    if tls == "none":
        click.echo("  Plain HTTP: tokens and passwords cross the network in clear; use --domain.")
    if upgrading:
        return
    click.echo(
        "\nNext: sign in at the URL above, then add a server:\n"
        "  serverflow tokens create --name cli --role admin\n"
        f"  SERVERFLOW_URL={url} SERVERFLOW_TOKEN=<it> serverflow servers add web-1"
    )


def _disable_default_site() -> None:
    """Without a domain the control plane is nginx's default server on port 80; Debian's
    own default site would clash with it."""
    default = Path("/etc/nginx/sites-enabled/default")
    if default.is_symlink() or default.exists():
        step("Disabling nginx's default site (the control plane answers on port 80)")
        default.unlink()
