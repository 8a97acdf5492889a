"""Deploy settings: the `deploy` section of agent.json, with defaults under the state dir.

Every path and command the agent touches while deploying is configurable, so tests point
them into a temporary directory and production points them at the system's nginx.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from serverflow_agent.config import AgentConfig, ConfigError
from serverflow_contract.desired import check_address

# Debian/Ubuntu's nginx includes conf.d/*.conf; install.sh adds conf.d/serverflow.conf,
# which includes this directory.
DEFAULT_NGINX_CONF_DIR = Path("/etc/nginx/conf.d/serverflow")


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
    renew_days: int = 30  # renew certificates with this many days left or fewer
    renew_check_hours: float = 12.0  # how often the agent checks (serverflow_agent.renewal)


@dataclass(frozen=True)
class DeploySettings:
    apps_dir: Path
    cache_dir: Path
    pm2_home: Path
    nginx: NginxSettings
    acme: AcmeSettings
    port_range: tuple[int, int] = (4000, 4999)
    drain_seconds: float = 2.0
    python: str = "python3"  # makes the virtualenvs of Python apps
    # Where this server's apps are reached (their URLs without a domain); None: this host's
    # address on the route to the control plane (serverflow_agent.deploy.address).
    public_address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path) -> DeploySettings:
        """The deploy settings of the agent whose state directory this is."""
        return cls.from_config(state_dir, AgentConfig.load(state_dir).deploy)

    @classmethod
    def from_config(cls, state_dir: Path, raw: dict[str, Any] | None) -> DeploySettings:
        raw = dict(raw or {})
        try:
            # The state dir is 0700 (it holds the keys); what nginx's workers must read
            # (releases, static sites, ACME challenges) lives beside it, world-readable.
            public = state_dir.parent / f"{state_dir.name}-www"
            nginx_raw = dict(raw.pop("nginx", {}) or {})
            acme_raw = dict(raw.pop("acme", {}) or {})
            nginx = NginxSettings(
                **_typed(
                    NginxSettings,
                    {
                        "conf_dir": DEFAULT_NGINX_CONF_DIR,
                        "certs_dir": state_dir / "certs",
                        **nginx_raw,
                    },
                )
            )
            acme = AcmeSettings(
                **_typed(
                    AcmeSettings,
                    {
                        "webroot": public / "acme-webroot",
                        "config_dir": state_dir / "certbot",
                        **acme_raw,
                    },
                )
            )
            base = {
                "apps_dir": public / "apps",
                "cache_dir": state_dir / "cache",
                "pm2_home": state_dir / "pm2",
            }
            known = {f.name for f in fields(cls)} - {"nginx", "acme", "extra"}
            unknown = set(raw) - known
            if unknown:
                raise ConfigError(f"unknown keys in deploy settings: {', '.join(sorted(unknown))}")
            values = _typed(cls, {**base, **raw})
            if values.get("public_address") is not None:
                values["public_address"] = check_address(values["public_address"])
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
