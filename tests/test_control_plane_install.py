"""The production install (`scripts/install`, README "Going to production") on a fresh
Debian 12, then an upgrade in place.

The server is a debootstrapped Debian 12 in a chroot with its own network namespace (see
serverflow_testkit.rootfs for why): nothing in it but Debian's packages, no network
beyond a link to this host, where pebble plays Let's Encrypt. The installer runs word for
word as the README shows it, plus the options that point it at pebble and at a local
wheelhouse (the sandbox has no route to PyPI).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverflow_testkit import wait_for
from serverflow_testkit.pebble import PebbleServer, start_pebble
from serverflow_testkit.rootfs import CACHE, Sandbox, debian_rootfs

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "cp.example.test"
# What a fresh server gets from the installer's apt step; preinstalled so that the
# sandbox needs no network (the installer finds them installed and goes on).
PACKAGES = ["nginx", "certbot", "sqlite3", "systemd", "postgresql"]


def _checkout(target: Path, version: str | None = None) -> None:
    """The working tree (tracked and new files, as a clone would have them once committed)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    if version:  # a newer release of the same code: versions and the agent pin bumped
        old = _version()
        for pyproject in (target / "pyproject.toml", target / "agent" / "pyproject.toml"):
            text = pyproject.read_text().replace(
                f"serverflow-agent=={old}", f"serverflow-agent=={version}"
            )
            pyproject.write_text(re.sub(r'(?m)^version = ".*"', f'version = "{version}"', text))


def _wheelhouse(sandbox: Sandbox, tarball: Path) -> Path:
    """Wheels of every dependency (and of the build backend) for the sandbox's own Python,
    built once per root filesystem and set of pyproject files: the sandbox installs from
    them with --no-index. Built by the sandbox's Python (Debian's 3.11.2), not this one:
    dependency markers differ between them (redis needs async-timeout before 3.11.3)."""
    projects = sorted([ROOT / "pyproject.toml", ROOT / "agent" / "pyproject.toml"])
    projects += sorted(ROOT.glob("plugins/*/pyproject.toml"))
    digest = hashlib.sha256(tarball.name.encode())
    for project in projects:
        digest.update(project.read_bytes())
    house = CACHE / f"wheelhouse-{digest.hexdigest()[:12]}"
    if not house.exists():
        source = sandbox.root / "root" / "wheel-source"
        _checkout(source)
        dists = " ".join(f"./{p.parent.relative_to(ROOT)}" for p in projects)
        built = sandbox.chroot(
            "python3 -m venv /tmp/wheel-venv && cd /root/wheel-source && /tmp/wheel-venv/bin/pip"
            f" wheel -q --disable-pip-version-check -w /root/wheelhouse {dists} hatchling babel",
            network=True,
        )
        assert built.returncode == 0, built.stdout + built.stderr
        partial = house.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.move(str(sandbox.root / "root" / "wheelhouse"), partial)
        partial.rename(house)
        shutil.rmtree(source)
    return house


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, PebbleServer]]:
    tarball = debian_rootfs(PACKAGES)
    base = tmp_path_factory.mktemp("install")
    sandbox = Sandbox(tarball, base / "root")
    pebble = None
    try:
        house = _wheelhouse(sandbox, tarball)
        sandbox.add_host(DOMAIN)
        subprocess.run(["cp", "-al", str(house), str(sandbox.root / "wheels")], check=True)
        pebble = start_pebble(base / "pebble", address=sandbox.gateway)
        shutil.copy(pebble.ca_bundle, sandbox.root / "root" / "pebble-listener.pem")
        yield sandbox, pebble
    finally:
        if pebble:
            pebble.stop()
        sandbox.close()


def install(
    sandbox: Sandbox, pebble: PebbleServer, checkout: str, options: str | None = None
) -> str:
    acme = (
        f"--domain {DOMAIN} --email ops@example.test --acme-server {pebble.directory_url}"
        " --acme-ca-bundle /root/pebble-listener.pem"
    )
    done = sandbox.chroot(
        f"cd /root/{checkout} && ./scripts/install {acme if options is None else options}"
        " --pip-args '--no-index --find-links /wheels'"
    )
    output = done.stdout + done.stderr
    print(f"--- scripts/install from /root/{checkout}:\n{output}")  # shown when a test fails
    assert done.returncode == 0, output[-4000:]
    return output


def https(sandbox: Sandbox, pebble: PebbleServer, path: str, *extra: str) -> str:
    """A request to the dashboard's domain over HTTPS, verified against pebble's root."""
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--resolve", f"{DOMAIN}:443:{sandbox.address}",
         "--cacert", str(pebble.root()), *extra, f"https://{DOMAIN}{path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_install_then_upgrade_keeps_data(server: tuple[Sandbox, PebbleServer]) -> None:
    sandbox, pebble = server
    version = _version()
    _checkout(sandbox.root / "root" / "serverflow")

    first = install(sandbox, pebble, "serverflow")
    assert f"ServerFlow {version} is running: https://{DOMAIN}" in first
    assert "First admin account" in first
    password = re.search(r"password: (\S+)", first)
    assert password
    assert "systemd is not PID 1 here" in first  # PID 1 checked, though systemctl exists

    # The dashboard over HTTPS with the ACME certificate; plain HTTP redirects to it.
    assert json.loads(https(sandbox, pebble, "/healthz"))["version"] == version
    assert "<form" in https(sandbox, pebble, "/login")
    redirect = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "--resolve", f"{DOMAIN}:80:{sandbox.address}", f"http://{DOMAIN}/login"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert redirect.stdout == f"301 https://{DOMAIN}/login"

    # The service runs as its own user, with a hardened unit for when systemd runs.
    state = sandbox.chroot("ps -o user= -p $(cat /var/lib/serverflow/control-plane.pid)")
    assert state.stdout.strip() == "serverflow", state.stderr
    unit = (sandbox.root / "etc/systemd/system/serverflow.service").read_text()
    for line in ("User=serverflow", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "Restart=on-failure", "ReadWritePaths=/var/lib/serverflow"):  # fmt: skip
        assert line in unit
    verified = sandbox.chroot("systemd-analyze verify /etc/systemd/system/serverflow.service")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    config = sandbox.root / "etc/serverflow/serverflow.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert f'public_url = "https://{DOMAIN}"' in config.read_text()

    # `serverflow` on PATH; as root it acts as the service user. Data to keep: a token
    # and a server made with it over the API.
    made = sandbox.chroot("serverflow tokens create --name ops --role admin --json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    auth = ("-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json")
    created = https(sandbox, pebble, "/api/v1/servers", *auth, "-d", '{"name": "web-1"}')
    install_token = json.loads(created)["install"]["token"]

    # A server's agent (here: on the same machine) installs from the control plane's
    # URL and connects over WSS through nginx; the CA is pebble's, so it is named.
    shutil.copy(pebble.root(), sandbox.root / "root" / "pebble-root.pem")
    agent = sandbox.chroot(
        f"curl -fsSL --cacert /root/pebble-root.pem https://{DOMAIN}/install.sh | bash -s --"
        f" --token {install_token} --ca-file /root/pebble-root.pem"
        " --pip-args '--no-index --find-links /wheels'"
    )
    assert agent.returncode == 0, agent.stdout + agent.stderr
    wait_for(lambda: _status(sandbox, pebble, auth) == "online", 60, "the agent online")

    # The upgrade: a newer release of the same checkout.
    newer = f"{version}.post1"
    _checkout(sandbox.root / "root" / "serverflow-next", version=newer)
    second = install(sandbox, pebble, "serverflow-next")
    assert f"ServerFlow upgraded to {newer}: https://{DOMAIN}" in second
    assert "First admin account" not in second
    assert "already in /etc/letsencrypt/live" in second  # the certificate is kept
    backups = list((sandbox.root / "var/lib/serverflow/backups").glob("*.sqlite3"))
    assert [b.name.startswith(f"serverflow-{version}-") for b in backups] == [True]

    assert sandbox.chroot("serverflow --version").stdout.strip().endswith(newer)
    assert json.loads(https(sandbox, pebble, "/healthz"))["version"] == newer
    servers = json.loads(https(sandbox, pebble, "/api/v1/servers", *auth))
    assert [s["name"] for s in servers["servers"]] == ["web-1"]
    # The agent comes back to the upgraded control plane by itself.
    wait_for(lambda: _status(sandbox, pebble, auth) == "online", 60, "the agent back online")
    # Exactly one control plane runs: the new one.
    running = sandbox.chroot("pgrep -u serverflow -f 'serverflow up' | wc -l")
    assert running.stdout.strip() == "1", running.stdout + running.stderr


def test_install_with_local_postgresql_and_plain_http(
    server: tuple[Sandbox, PebbleServer],
) -> None:
    """`--postgres`: PostgreSQL on the server, a role row-level security applies to; an
    upgrade takes a pg_dump first. `--no-tls`: the dashboard on port 80, any name."""
    sandbox, pebble = server
    _checkout(sandbox.root / "root" / "serverflow")
    first = install(sandbox, pebble, "serverflow", "--no-tls --postgres")
    assert "Plain HTTP" in first and "First admin account" in first
    health = subprocess.run(
        ["curl", "-sS", "--fail-with-body", f"http://{sandbox.address}/readyz"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert health.returncode == 0, health.stdout + health.stderr
    config = (sandbox.root / "etc/serverflow/serverflow.toml").read_text()
    assert 'database_url = "postgres://serverflow:' in config
    role = sandbox.chroot(
        'runuser -u postgres -- psql -XtA -c "SELECT rolsuper, rolbypassrls FROM pg_roles'
        " WHERE rolname = 'serverflow'\""
    )
    assert role.stdout.strip() == "f|f", role.stdout + role.stderr

    second = install(sandbox, pebble, "serverflow", "")  # nothing given: all as recorded
    assert "ServerFlow upgraded to" in second and "First admin account" not in second
    assert config == (sandbox.root / "etc/serverflow/serverflow.toml").read_text()
    dumps = list((sandbox.root / "var/lib/serverflow/backups").glob("*.dump"))
    assert len(dumps) == 1 and dumps[0].stat().st_size > 0


def _status(sandbox: Sandbox, pebble: PebbleServer, auth: tuple[str, ...]) -> str:
    servers = json.loads(https(sandbox, pebble, "/api/v1/servers", *auth))["servers"]
    return str(servers[0]["status"])


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'(?m)^version = "(.*)"', text)
    assert found
    return found.group(1)
