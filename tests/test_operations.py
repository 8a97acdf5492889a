"""Health endpoints, logs, OpenAPI, settings and the app's own keys."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from serverflow.errors import CODES, ConfigError
from serverflow.keys import Cipher, load_or_create_key
from serverflow.logs import JsonFormatter, RedactingFilter, redact
from serverflow.models import Role, Server
from serverflow.settings import load_settings
from serverflow.tenancy import scoped
from serverflow_testkit.postgres import PostgresServer, aexecute
from tests.conftest import BOTH_DATABASES, ControlPlaneUnderTest

ROOT = Path(__file__).resolve().parents[1]


async def test_healthz_and_readyz(control_plane: ControlPlaneUnderTest) -> None:
    client = control_plane.client()
    assert (await (await client.get("/healthz")).get_json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and (await ready.get_json())["database"] == "ok"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_readyz_reports_an_unreachable_database(
    control_plane: ControlPlaneUnderTest,
    postgres: PostgresServer,
) -> None:
    client = control_plane.client()
    assert (await client.get("/readyz")).status_code == 200
    name = control_plane.db_url.rsplit("/", 1)[1]
    await aexecute(
        postgres.admin_dsn,
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    try:
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert (await down.get_json())["error"]["code"] == "DB001"
        assert (await client.get("/healthz")).status_code == 200  # the process is still up
    finally:
        await aexecute(postgres.admin_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    for _ in range(20):  # the pool reconnects on its own
        if (await client.get("/readyz")).status_code == 200:
            break
    assert (await client.get("/readyz")).status_code == 200


async def test_openapi_document(control_plane: ControlPlaneUnderTest) -> None:
    doc = await (await control_plane.client().get("/api/v1/openapi.json")).get_json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in (
        "/api/v1/servers",
        "/api/v1/servers/{server_id}",
        "/api/v1/tokens",
        "/api/v1/members",
        "/api/v1/me",
        "/api/v1/plugins",
    ):
        assert path in paths, path
    assert not any(p.startswith(("/login", "/healthz", "/static")) for p in paths)
    create = paths["/api/v1/servers"]["post"]
    server_in = create["requestBody"]["content"]["application/json"]["schema"]
    assert server_in["title"] == "ServerIn" and server_in["additionalProperties"] is False
    assert set(create["responses"]) >= {"201", "409"}
    assert "bearer" in doc["components"]["securitySchemes"]


def test_redaction() -> None:
    token = "sf_" + "a" * 32 + "_" + "B" * 43
    for text in (
        f"got {token} here",
        f"Authorization: Bearer {token}",
        'password="hunter22"',
        "login password=hunter22&x=1",
        "Cookie: serverflow_session=abc.def.ghi",
    ):
        cleaned = redact(text)
        assert token not in cleaned and "hunter22" not in cleaned and "abc.def" not in cleaned


def test_json_logs_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("serverflow.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    token = "sf_" + "c" * 32 + "_" + "D" * 43
    logger.warning("caller used %s", token, extra={"code": "AUTH002"})
    line = json.loads(stream.getvalue())
    assert line["level"] == "WARNING" and line["code"] == "AUTH002"
    assert token not in stream.getvalue()


async def test_logs_never_contain_tokens_or_passwords(
    control_plane: ControlPlaneUnderTest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    created = await (
        await client.post("/api/v1/tokens", json={"name": "x"}, headers=tenant.auth())
    ).get_json()
    await client.get("/api/v1/servers", headers={"Authorization": f"Bearer {created['token']}"})
    await client.get("/api/v1/servers", headers={"Authorization": "Bearer sf_bad"})
    for value in [created["token"], *tenant.tokens.values()]:
        assert value not in caplog.text
    assert tenant.tokens[Role.OWNER] not in caplog.text


def test_keys_are_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "session.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        load_or_create_key(path)
    assert err.value.code == "CFG002"


def test_cipher_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    cipher = Cipher(load_or_create_key(tmp_path / "k"))
    sealed = cipher.encrypt("DATABASE_PASSWORD=hunter22")
    assert "hunter22" not in sealed
    assert cipher.decrypt(sealed) == "DATABASE_PASSWORD=hunter22"
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError):
        cipher.decrypt(tampered)
    with pytest.raises(ValueError):
        Cipher(load_or_create_key(tmp_path / "other")).decrypt(sealed)


def test_settings_precedence_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "serverflow.toml").write_text('port = 9000\nhost = "0.0.0.0"\n')
    env = {
        "SERVERFLOW_DATA_DIR": str(data),
        "SERVERFLOW_PORT": "9100",
        "SERVERFLOW_DISABLED_PLUGINS": "a, b",
    }
    settings = load_settings(env)
    assert (settings.port, settings.host) == (9100, "0.0.0.0")
    assert settings.disabled_plugins == ("a", "b")
    assert settings.database == f"sqlite://{data / 'serverflow.sqlite3'}"
    with pytest.raises(ConfigError, match="port"):
        load_settings({**env, "SERVERFLOW_PORT": "70000"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({**env, "SERVERFLOW_CONFIG": str(tmp_path / "missing.toml")})
    home_default = load_settings({"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert home_default.data_dir == tmp_path / "xdg" / "serverflow"


def test_every_error_code_is_documented() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from errors_doc import render

    assert (ROOT / "docs" / "errors.md").read_text() == render(), (
        "docs/errors.md is stale: run python scripts/errors_doc.py"
    )
    used = set()
    for path in (ROOT / "core" / "serverflow").rglob("*.py"):
        used.update(re.findall(r'code="([A-Z]+[0-9]+)"', path.read_text()))
    assert used <= set(CODES), used - set(CODES)


@BOTH_DATABASES
async def test_cancelling_a_transaction_on_entry_never_wedges_the_database(
    control_plane: ControlPlaneUnderTest,
) -> None:
    """Quart cancels handlers whose client left; that may land while BEGIN is in flight."""
    tenant = await control_plane.tenant("Acme")

    async def work() -> None:
        async with scoped(tenant.org.id):
            await Server.all().count()

    for spins in range(40):
        task = asyncio.create_task(work())
        for _ in range(spins % 8):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with asyncio.timeout(5):
        await work()
        async with scoped(tenant.org.id):
            await Server.create(name="after")
