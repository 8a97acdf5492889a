"""The agent's state directory and its `agent.json` (what registration handed over)."""

from __future__ import annotations

import configparser
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serverflow_contract import protocol

DEFAULT_STATE_DIR = "/var/lib/serverflow-agent"
STATE_DIR_ENV = "SERVERFLOW_AGENT_STATE_DIR"
# Written by install.sh into the venv (sys.prefix); see install_record_path().
INSTALL_RECORD = "serverflow-agent.conf"
CONFIG_FILE = "agent.json"
STATE_FILE = "state.sqlite3"

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9_-]{43}")


class ConfigError(Exception):
    """agent.json is missing or does not describe a usable registration."""


def state_dir_from(option: str | os.PathLike[str] | None) -> Path:
    """--state-dir, else $SERVERFLOW_AGENT_STATE_DIR, else the state dir the installer
    recorded for this installation, else /var/lib/serverflow-agent."""
    return Path(
        option or os.environ.get(STATE_DIR_ENV) or recorded_state_dir() or DEFAULT_STATE_DIR
    )


def install_record_path() -> Path:
    """The installer's record of this installation, in the agent's own venv.

    Beside the code it describes rather than in /etc: each installation (each --prefix)
    has its own, nothing outside the prefix is needed to find it, and no variable has to
    point at it.
    """
    return Path(sys.prefix) / INSTALL_RECORD


def recorded_state_dir(record: Path | None = None) -> Path | None:
    """`state_dir` from the `[agent]` section of the install record, None without one."""
    path = record or install_record_path()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as file:
            parser.read_file(file)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    value = parser.get("agent", "state_dir", fallback="").strip()
    if not value:
        return None
    if not os.path.isabs(value):
        raise ConfigError(f"{path}: state_dir must be an absolute path, not {value!r}")
    return Path(value)


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory (0700) if needed; tighten it if it is wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write a 0600 file durably: O_EXCL when `exclusive`, else temp file + rename.

    The rename makes a replacement atomic, so a crash leaves either the old or the new
    content, never half a key.
    """
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{protocol.new_nonce()[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class AgentConfig:
    """The contents of agent.json."""

    url: str
    ws_url: str
    server_id: str
    org_id: str
    control_plane_key: str
    tls_pin: str | None = None
    ca_file: str | None = None
    heartbeat_interval_ms: int | None = None
    # Where deploys put releases, nginx files, certificates (serverflow_agent.deploy.settings).
    deploy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, not {self.url!r}")
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"ws_url must start with ws:// or wss://, not {self.ws_url!r}")
        for name in ("server_id", "org_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID.fullmatch(value):
                raise ConfigError(f"{name} is not a valid identifier: {value!r}")
        if not isinstance(self.control_plane_key, str) or not _KEY.fullmatch(
            self.control_plane_key
        ):
            raise ConfigError("control_plane_key is not a base64url Ed25519 public key")
        if self.tls_pin is not None:
            from serverflow_contract.tlspin import parse_pin  # ssl is only needed with a pin

            try:
                parse_pin(self.tls_pin)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            if not self.ws_url.startswith("wss://"):
                raise ConfigError("tls_pin needs a wss:// ws_url")
        hb = self.heartbeat_interval_ms
        if hb is not None and (not isinstance(hb, int) or not 100 <= hb <= 3_600_000):
            raise ConfigError("heartbeat_interval_ms must be an integer from 100 to 3600000")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown keys in agent.json: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"agent.json is incomplete: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def load(cls, state_dir: Path) -> AgentConfig:
        path = state_dir / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{path} does not exist: register first "
                "(serverflow-agent register --url URL --token TOKEN)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def save(self, state_dir: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        write_private(state_dir / CONFIG_FILE, text.encode())
