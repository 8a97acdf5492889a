"""Deploy settings: the `deploy` section of agent.json, with defaults under the state dir.

Every path and command the agent touches while deploying is configurable, so tests point
them into a temporary directory and production points them at the system's nginx.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from serverflow_agent.config import ConfigError


@dataclass(frozen=True)
class NginxSettings:
    conf_dir: Path  # one <app>.conf per app, included by the main nginx configuration
    test: tuple[str, ...] = ("nginx", "-t")  # argv that validates the whole configuration
    reload: tuple[str, ...] = ("nginx", "-s", "reload")
    http_port: int = 80
    https_port: int = 443
    certs_dir: Path = Path("/var/lib/serverflow-agent/certs")


@dataclass(frozen=True)
class AcmeSettings:
    directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str | None = None
    webroot: Path = Path("/var/lib/serverflow-agent/acme-webroot")
    config_dir: Path = Path("/var/lib/serverflow-agent/certbot")
    certbot: str = "certbot"
    ca_bundle: str | None = None  # trust this CA for the ACME server (tests: pebble)
    renew_days: int = 30


@dataclass(frozen=True)
class DeploySettings:
    apps_dir: Path
    cache_dir: Path
    pm2_home: Path
    nginx: NginxSettings
    acme: AcmeSettings
    port_range: tuple[int, int] = (4000, 4999)
    drain_seconds: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, state_dir: Path, raw: dict[str, Any] | None) -> DeploySettings:
        raw = dict(raw or {})
        try:
            nginx_raw = dict(raw.pop("nginx", {}) or {})
            acme_raw = dict(raw.pop("acme", {}) or {})
            nginx = NginxSettings(
                **_typed(
                    NginxSettings,
                    {
                        "conf_dir": state_dir / "nginx",
                        "certs_dir": state_dir / "certs",
                        **nginx_raw,
                    },
                )
            )
            acme = AcmeSettings(
                **_typed(
                    AcmeSettings,
                    {
                        "webroot": state_dir / "acme-webroot",
                        "config_dir": state_dir / "certbot",
                        **acme_raw,
                    },
                )
            )
            base = {
                "apps_dir": state_dir / "apps",
                "cache_dir": state_dir / "cache",
                "pm2_home": state_dir / "pm2",
            }
            known = {f.name for f in fields(cls)} - {"nginx", "acme", "extra"}
            unknown = set(raw) - known
            if unknown:
                raise ConfigError(f"unknown keys in deploy settings: {', '.join(sorted(unknown))}")
            values = _typed(cls, {**base, **raw})
            return cls(nginx=nginx, acme=acme, **values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid deploy settings: {exc}") from exc


def _typed(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    """Coerce JSON values to the dataclass field types (paths, tuples)."""
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(kind)}
    for name, value in values.items():
        if name not in types:
            raise ConfigError(f"unknown deploy setting {name!r}")
        annotation = str(types[name])
        if "Path" in annotation and value is not None:
            value = Path(value)
        elif annotation.startswith("tuple") and value is not None:
            value = tuple(value)
        out[name] = value
    return out
