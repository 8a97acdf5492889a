"""The `serverflow` command as a new user meets it."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import httpx

from serverflow_testkit.controlplane import ControlPlaneProcess, cli_env, run_cli


def _login(base: str, email: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False)
    page = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    response = client.post(
        "/login", data={"csrf_token": csrf.group(1), "email": email, "password": password}
    )
    assert response.status_code == 302, response.text
    return client


def test_up_creates_admin_once_and_serves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ControlPlaneProcess(data) as cp:
        first_log = cp.log()
        email = re.search(r"email:\s+(\S+)", first_log)
        password = re.search(r"password:\s+(\S+)", first_log)
        assert email and password, first_log
        client = _login(cp.url, email.group(1), password.group(1))
        page = client.get("/").text
        assert email.group(1) in page and "Servers" in page
        assert httpx.get(cp.url + "/readyz").json()["status"] == "ready"
        # Secrets of the app: generated on first run, private.
        for name in ("session.key", "encryption.key"):
            mode = stat.S_IMODE((data / "secrets" / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        # The password is never logged after the one-time banner.
        assert first_log.count(password.group(1)) == 1
    with ControlPlaneProcess(data) as cp:
        assert "First admin" not in cp.log() and "password:" not in cp.log()
        # Same session key: the old admin can still sign in.
        _login(cp.url, email.group(1), password.group(1))


def test_users_and_tokens_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = cli_env(data)
    run_cli("migrate", env=env)
    created = json.loads(
        run_cli(
            "users",
            "create",
            "ops@acme.test",
            "--new-org",
            "Acme",
            "--role",
            "owner",
            "--json",
            env=env,
        ).stdout
    )
    assert created["organization"] == "acme" and created["password"]
    token = json.loads(
        run_cli(
            "tokens",
            "create",
            "--org",
            "acme",
            "--name",
            "ci",
            "--role",
            "member",
            "--json",
            env=env,
        ).stdout
    )
    assert token["token"].startswith("sf_")
    with ControlPlaneProcess(data) as cp:
        headers = {"Authorization": f"Bearer {token['token']}"}
        me = httpx.get(cp.url + "/api/v1/me", headers=headers).json()
        assert me["organization"]["slug"] == "acme" and me["role"] == "member"
        made = httpx.post(cp.url + "/api/v1/servers", json={"name": "web-1"}, headers=headers)
        assert made.status_code == 201
        _login(cp.url, "ops@acme.test", created["password"])
        assert token["token"] not in cp.log()

    duplicate = run_cli("users", "create", "ops@acme.test", "--org", "acme", env=env, check=False)
    assert duplicate.returncode == 1 and "USR001" in duplicate.stderr
    weak = run_cli(
        "users",
        "create",
        "weak@acme.test",
        "--org",
        "acme",
        "--password-stdin",
        env=env,
        input="short\n",
        check=False,
    )
    assert weak.returncode == 1 and "at least" in weak.stderr
    missing_org = run_cli("tokens", "create", "--org", "nope", "--name", "x", env=env, check=False)
    assert missing_org.returncode == 1 and "ORG001" in missing_org.stderr


def test_migrate_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    assert "applied" in run_cli("migrate", env=env).stdout
    run_cli("users", "create", "keep@acme.test", "--new-org", "Acme", env=env)
    assert "up to date" in run_cli("migrate", env=env).stdout
    again = run_cli("users", "create", "keep@acme.test", "--org", "acme", env=env, check=False)
    assert "USR001" in again.stderr  # the user is still there


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "serverflow.toml").write_text('port = 9001\nlog_format = "json"\n')
    env = cli_env(
        data,
        SERVERFLOW_DATABASE_URL="postgres://sf:hunter22@db.internal:5432/sf",
        SERVERFLOW_PORT="9002",
    )
    shown = json.loads(run_cli("config", "show", "--json", env=env).stdout)
    assert shown["port"] == 9002  # the environment wins over the file
    assert shown["log_format"] == "json"  # the file wins over defaults
    assert shown["config_file"] == str(data / "serverflow.toml")
    assert "hunter22" not in json.dumps(shown)
    assert shown["database_url"] == "postgres://sf:********@db.internal:5432/sf"
    text = run_cli("config", "show", env=env).stdout
    assert "hunter22" not in text and "session_key = ********" in text


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "serverflow.toml").write_text("port = 'eighty'\nbogus = 1\n")
    proc = run_cli("config", "show", env=cli_env(data), check=False)
    assert proc.returncode == 1
    assert "CFG001" in proc.stderr and "port" in proc.stderr and "bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    (data / "serverflow.toml").write_text("port = [")
    proc = run_cli("up", env=cli_env(data), check=False)
    assert proc.returncode == 1 and "CFG001" in proc.stderr and "Traceback" not in proc.stderr


def test_set_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = cli_env(data)
    run_cli("users", "create", "ops@acme.test", "--new-org", "Acme", env=env)
    out = run_cli(
        "users",
        "set-password",
        "ops@acme.test",
        "--password-stdin",
        env=env,
        input="brand new passphrase\n",
    ).stdout
    assert "changed" in out and "brand new passphrase" not in out
    missing = run_cli("users", "set-password", "ghost@acme.test", env=env, check=False)
    assert missing.returncode == 1 and "USR002" in missing.stderr
    with ControlPlaneProcess(data) as cp:
        _login(cp.url, "ops@acme.test", "brand new passphrase")


def test_print_flags_give_the_bare_value_for_scripts(tmp_path: Path) -> None:
    """`tokens create --print-token` and `servers add --print-command` print one line each,
    usable as `$(...)` (the README's quick start does), and the install line runs as root
    without sudo."""
    data = tmp_path / "data"
    env = cli_env(data)
    run_cli("migrate", env=env)
    run_cli("users", "create", "ops@acme.test", "--new-org", "Acme", "--role", "owner", env=env)
    token = run_cli(
        "tokens", "create", "--org", "acme", "--name", "ci", "--role", "admin", "--print-token",
        env=env,
    ).stdout  # fmt: skip
    assert re.fullmatch(r"sf_\S+\n", token), token
    with ControlPlaneProcess(data) as cp:
        remote = {**env, "SERVERFLOW_URL": cp.url, "SERVERFLOW_TOKEN": token.strip()}
        line = run_cli("servers", "add", "web-1", "--print-command", env=remote).stdout
        assert re.fullmatch(
            rf"curl -fsSL {re.escape(cp.url)}/install\.sh \| bash -s -- --token sfi_\S+\n", line
        ), line
        listed = httpx.get(
            cp.url + "/api/v1/servers", headers={"Authorization": f"Bearer {token.strip()}"}
        ).json()
        assert [s["name"] for s in listed["servers"]] == ["web-1"]
