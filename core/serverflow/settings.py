"""Effective configuration: defaults, then an optional TOML file, then SERVERFLOW_* variables."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from serverflow.errors import ConfigError

ENV_PREFIX = "SERVERFLOW_"

# The environment load_settings() was given; None: os.environ (a plain Settings()).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("serverflow_environ", default=None)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "serverflow"


def _data_dir(environ: Mapping[str, str]) -> Path:
    """The data directory as the environment alone gives it: where the TOML file is looked for."""
    return Path(environ.get(ENV_PREFIX + "DATA_DIR") or default_data_dir(environ)).expanduser()


def _config_file(environ: Mapping[str, str]) -> Path:
    """$SERVERFLOW_CONFIG (which must exist), else <data dir>/serverflow.toml (if present)."""
    config_path = environ.get(ENV_PREFIX + "CONFIG")
    if not config_path:
        return _data_dir(environ) / "serverflow.toml"
    config_file = Path(config_path).expanduser()
    if not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    return config_file


class _EnvSource(EnvSettingsSource):
    """SERVERFLOW_<FIELD> variables of the given environment, exactly as spelled (upper case).

    Values go to the fields' validators as the raw strings (no JSON decoding, so that
    DISABLED_PLUGINS=a,b works); empty values count as unset; config_file is not read
    from the environment (SERVERFLOW_CONFIG names the file instead); other SERVERFLOW_*
    variables (SERVERFLOW_TOKEN, SERVERFLOW_URL...) are ignored.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(
            settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX, env_ignore_empty=True
        )
        self.env_vars = {
            key.lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX) and key == key.upper() and value != ""
        }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name == "config_file":
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        return value


class _TomlSource(TomlConfigSettingsSource):
    """The TOML file if it exists, its top-level keys named like the fields; sets config_file."""

    def __init__(self, settings_cls: type[BaseSettings], config_file: Path) -> None:
        self.config_file = config_file
        self.found = config_file.is_file()
        try:
            super().__init__(settings_cls, toml_file=config_file)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc

    def __call__(self) -> dict[str, Any]:
        values = dict(super().__call__())
        if self.found:
            values["config_file"] = self.config_file
        return values


class _DataDirDefault(PydanticBaseSettingsSource):
    """The lowest layer: data_dir's default depends on the environment ($XDG_DATA_HOME)."""

    def __init__(self, settings_cls: type[BaseSettings], data_dir: Path) -> None:
        super().__init__(settings_cls)
        self.data_dir = data_dir

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (self.data_dir if field_name == "data_dir" else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir}


class Settings(BaseSettings):
    """Every setting of the control plane. Field names map to SERVERFLOW_<NAME>.

    Layers, lowest priority first: the defaults here, the TOML file, SERVERFLOW_*
    variables, then keyword arguments (load_settings(**overrides), Settings(**values)).
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        case_sensitive=True,  # TOML keys and keyword arguments: exactly the field names
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
    )

    data_dir: Path
    database_url: str = ""
    # Set: the event bus goes through Redis, so that several instances (sharing one
    # PostgreSQL database) see each other's events. Unset: one instance, in-process bus.
    redis_url: str = ""
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
    # Agent handshakes one instance works on at once; beyond, AUT006 (retry later):
    # thousands queued behind a database pool all time out instead (AUT004).
    agent_handshakes_max: int = Field(default=100, ge=1, le=100_000)
    heartbeat_history: int = Field(default=720, ge=1)
    install_token_minutes: int = Field(default=60, ge=1)
    # The ports the agents' nginx listens on for apps without a domain: one per app and
    # server, kept across releases (docs/deploys.md). SERVERFLOW_APP_PORTS=8100-8999.
    app_ports: tuple[int, int] = (8100, 8999)
    audit_retention_days: int = Field(default=365, ge=1)
    # Security refusals of one kind are written once per window, then as a count.
    audit_refusal_window_s: float = Field(default=60, gt=0, le=3600)
    api_rate_per_minute: int = Field(default=600, ge=1)
    mcp_rate_per_minute: int = Field(default=120, ge=1)
    plan_expiry_seconds: int = Field(default=900, ge=1)  # MCP dry runs not applied in time
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For is believed: behind
    # the production install's nginx, 127.0.0.1. Empty: the connection's address counts.
    trusted_proxies: tuple[str, ...] = ()
    # Set: /metrics answers any caller presenting it as a bearer token. Unset: /metrics
    # answers only direct requests from this machine (not through the reverse proxy).
    metrics_token: str = Field(default="", max_length=200)
    config_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = _ENVIRON.get()
        environ: Mapping[str, str] = os.environ if given is None else given
        return (
            init_settings,
            _EnvSource(settings_cls, environ),
            _TomlSource(settings_cls, _config_file(environ)),
            _DataDirDefault(settings_cls, _data_dir(environ)),
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("disabled_plugins", "trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_needs_postgres(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise PydanticCustomError(
                "redis_url",
                "{url} is not a Redis URL (redis://host:6379/0)",
                {"url": mask_url(value)},
            )
        if not str(info.data.get("database_url", "")).startswith(("postgres", "asyncpg")):
            raise PydanticCustomError(
                "redis_needs_postgres",
                "SERVERFLOW_REDIS_URL is set, so several instances may run: they need a shared "
                "PostgreSQL database (SERVERFLOW_DATABASE_URL), and SQLite is one file on one "
                "machine. Set SERVERFLOW_DATABASE_URL=postgres://USER:PASSWORD@HOST/DB, or unset "
                "SERVERFLOW_REDIS_URL to run a single instance on SQLite.",
            )
        return value

    @field_validator("app_ports", mode="before")
    @classmethod
    def _port_range(cls, value: Any) -> Any:
        if isinstance(value, str):
            low, sep, high = value.partition("-")
            if not sep or not low.strip().isdigit() or not high.strip().isdigit():
                raise ValueError(f"{value!r} is not a port range like 8100-8999")
            return (int(low), int(high))
        return value

    @field_validator("app_ports")
    @classmethod
    def _ports_in_order(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{low}-{high} is not a port range (1-65535, low-high)")
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
        data["redis_url"] = mask_url(self.redis_url)
        data["metrics_token"] = "********" if self.metrics_token else ""
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
    """Build settings from the environment (default: os.environ) and the config file.

    Keyword overrides (the flags of `serverflow up`, tests) win over every other layer.
    """
    token = _ENVIRON.set(os.environ if environ is None else environ)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    finally:
        _ENVIRON.reset(token)
