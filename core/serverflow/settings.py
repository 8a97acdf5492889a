"""Effective configuration: defaults, then an optional TOML file, then SERVERFLOW_* variables."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serverflow.errors import ConfigError

ENV_PREFIX = "SERVERFLOW_"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "serverflow"


class Settings(BaseModel):
    """Every setting of the control plane. Field names map to SERVERFLOW_<NAME>."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    session_hours: int = Field(default=24 * 14, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    login_window_minutes: int = Field(default=15, ge=1)
    disabled_plugins: tuple[str, ...] = ()
    # The marketplace: a JSON catalog (file path or http(s) URL) and where Install gets
    # packages from (a local wheelhouse directory, else a package index URL).
    plugin_catalog: str = ""
    plugin_index_url: str = ""
    plugin_wheelhouse: Path | None = None
    heartbeat_interval_ms: int = Field(default=5000, ge=100, le=600_000)
    offline_after_missed: int = Field(default=3, ge=1)
    heartbeat_history: int = Field(default=720, ge=1)
    install_token_minutes: int = Field(default=60, ge=1)
    audit_retention_days: int = Field(default=365, ge=1)
    api_rate_per_minute: int = Field(default=600, ge=1)
    mcp_rate_per_minute: int = Field(default=120, ge=1)
    plan_expiry_seconds: int = Field(default=900, ge=1)  # MCP dry runs not applied in time
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    config_file: Path | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("disabled_plugins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite://{self.data_dir / 'serverflow.sqlite3'}"

    @property
    def dialect(self) -> str:
        return "sqlite" if self.database.startswith("sqlite") else "postgres"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def shown(self) -> dict[str, Any]:
        """Settings as `config show` prints them: secrets masked."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data["database_url"] = mask_url(self.database)
        data["public_url"] = self.base_url
        data["session_key"] = f"******** (in {self.secrets_dir / 'session.key'})"
        data["encryption_key"] = f"******** (in {self.secrets_dir / 'encryption.key'})"
        return data


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:********@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (default: os.environ) and the config file."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    data_dir = Path(env.get(ENV_PREFIX + "DATA_DIR") or default_data_dir(env)).expanduser()
    config_path = env.get(ENV_PREFIX + "CONFIG")
    config_file = Path(config_path).expanduser() if config_path else data_dir / "serverflow.toml"
    if config_path and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    if config_file.is_file():
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        values["config_file"] = config_file
    for name in Settings.model_fields:
        if name == "config_file":
            continue
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    values.setdefault("data_dir", data_dir)
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
