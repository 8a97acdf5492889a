"""The plugin marketplace: a catalog of plugins, Install (pip), and enable/disable that persist.

The catalog is a JSON file or URL (`plugin_catalog`): `{"plugins": [{name, description,
package, version, extension_points}]}`. Install runs pip in the control plane's own
environment, from a local wheelhouse (`plugin_wheelhouse`, no index) or a package index
(`plugin_index_url`), with the installed ServerFlow distributions pinned so a plugin can
never replace the control plane; then the new plugin is loaded without a restart when it
brings no routes. Enabled/disabled choices are kept in `<data dir>/plugins.json`, on top
of SERVERFLOW_DISABLED_PLUGINS, which the dashboard cannot override.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError
from quart import Quart

from serverflow.errors import Conflict, NotFound, ServerFlowError
from serverflow.plugins import Activation, Plugins
from serverflow.settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "serverflow.marketplace"
STATE_FILE = "plugins.json"
INSTALL_TIMEOUT_S = 600.0
PINNED = ("serverflow", "serverflow-agent")
PACKAGE = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"


class MarketplaceError(ServerFlowError):
    status = 502


class CatalogEntry(BaseModel):
    """One plugin the catalog offers."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    description: str = Field(default="", max_length=1000)
    package: str = Field(pattern=PACKAGE, max_length=200)
    version: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.+!_-]{1,64}$")
    extension_points: list[str] = Field(default_factory=list, max_length=20)


@dataclass
class InstallResult:
    entry: CatalogEntry
    activations: list[Activation]
    restart_required: bool
    output: str = ""


@dataclass
class CatalogView:
    """A catalog entry with what is installed of it."""

    entry: CatalogEntry
    installed_version: str | None
    plugins: list[str] = field(default_factory=list)


class PluginStates:
    """The dashboard's enabled/disabled choices, in a JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def disabled(self) -> set[str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); every plugin stays as configured", self.path, exc)
            return set()
        names = data.get("disabled", []) if isinstance(data, dict) else []
        return {str(n) for n in names}

    def save(self, disabled: set[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"disabled": sorted(disabled)}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".plugins-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fp:
                fp.write(body)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Marketplace:
    def __init__(self, settings: Settings, plugins: Plugins) -> None:
        self.settings = settings
        self.plugins = plugins
        self.states = PluginStates(settings.data_dir / STATE_FILE)
        self._lock = asyncio.Lock()

    # -- state ----------------------------------------------------------------------

    def apply_saved_state(self) -> None:
        """At start-up: switch off the plugins the dashboard disabled."""
        for name in sorted(self.states.disabled()):
            if self.plugins.host.info(name) is not None:
                self.plugins.disable(name)
            else:
                self.plugins.host.disabled.add(name)  # not installed (yet): stays off

    def _save(self) -> None:
        self.states.save(set(self.plugins.host.disabled) - self.plugins.configured_off)

    def _known(self, name: str) -> None:
        if self.plugins.host.info(name) is None:
            raise NotFound(f"no plugin named {name!r} is installed", code="PLG001")

    def disable(self, name: str) -> None:
        self._known(name)
        self.plugins.disable(name)
        self._save()
        log.info("plugin %s disabled", name)

    def enable(self, name: str) -> Activation:
        self._known(name)
        if name in self.plugins.configured_off:
            raise Conflict(
                f"{name} is disabled by the configuration (SERVERFLOW_DISABLED_PLUGINS); "
                "change it there and restart",
                code="PLG004",
            )
        activation = self.plugins.enable(name)
        self._save()
        log.info("plugin %s enabled (error: %s)", name, activation.error)
        return activation

    # -- catalog --------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self.settings.plugin_catalog)

    async def entries(self) -> list[CatalogEntry]:
        source = self.settings.plugin_catalog
        if not source:
            return []
        try:
            if source.startswith(("http://", "https://")):
                async with httpx.AsyncClient(timeout=10, follow_redirects=True) as http:
                    response = await http.get(source)
                    response.raise_for_status()
                    raw = response.json()
            else:
                raw = json.loads(Path(source).expanduser().read_text())
        except (OSError, ValueError, httpx.HTTPError) as exc:
            raise MarketplaceError(
                f"cannot read the plugin catalog {source}: {exc}", code="PLG005"
            ) from exc
        rows = raw.get("plugins", []) if isinstance(raw, dict) else raw
        if not isinstance(rows, list):
            raise MarketplaceError(
                f"the plugin catalog {source} has no list of plugins", code="PLG005"
            )
        entries = []
        for row in rows:
            try:
                entries.append(CatalogEntry.model_validate(row))
            except ValidationError as exc:
                log.warning("plugin catalog entry skipped: %s", exc.errors()[0]["msg"])
        return entries

    async def catalog(self) -> list[CatalogView]:
        views = []
        for entry in await self.entries():
            installed = _installed_version(entry.package)
            names = [
                p.name
                for p in self.plugins.host.plugins()
                if p.distribution and _same(p.distribution, entry.package)
            ]
            views.append(CatalogView(entry, installed, names))
        return views

    async def entry(self, name: str) -> CatalogEntry:
        for entry in await self.entries():
            if entry.name == name:
                return entry
        raise NotFound(f"the plugin catalog has no plugin {name!r}", code="PLG002")

    # -- installing -----------------------------------------------------------------

    def _source_args(self) -> list[str]:
        if self.settings.plugin_wheelhouse is not None:
            return ["--no-index", "--find-links", str(self.settings.plugin_wheelhouse)]
        if self.settings.plugin_index_url:
            return ["--index-url", self.settings.plugin_index_url]
        raise Conflict(
            "no package source is configured: set plugin_wheelhouse or plugin_index_url",
            code="PLG006",
        )

    async def install(self, name: str, app: Quart | None = None) -> InstallResult:
        """pip-install a catalog plugin into this environment and load it if possible."""
        entry = await self.entry(name)
        source = self._source_args()
        requirement = f"{entry.package}=={entry.version}" if entry.version else entry.package
        async with self._lock:
            with tempfile.TemporaryDirectory(prefix="sf-pip-") as tmp:
                constraints = Path(tmp) / "constraints.txt"
                constraints.write_text(
                    "".join(
                        f"{dist}=={version}\n"
                        for dist in PINNED
                        if (version := _installed_version(dist)) is not None
                    )
                )
                output = await self._pip(
                    "install",
                    "--constraint",
                    str(constraints),
                    *source,
                    requirement,
                )
            try:
                activations = self.plugins.load_distribution(entry.package)
            except metadata.PackageNotFoundError as exc:
                raise MarketplaceError(
                    f"pip installed {requirement} but it cannot be found in this environment",
                    code="PLG003",
                ) from exc
            if not activations:
                raise MarketplaceError(
                    f"{entry.package} is installed but advertises no ServerFlow plugin "
                    "(entry-point group 'serverflow')",
                    code="PLG003",
                )
            mounted = set(app.blueprints) if app is not None else set()
            restart = False
            for activation in activations:
                if activation.reloaded or any(b not in mounted for b in activation.blueprints):
                    self.plugins.pending_restart.add(activation.name)
                    restart = True
            self._save()
        log.info("installed %s: %s", requirement, [a.name for a in activations])
        return InstallResult(entry, activations, restart, output)

    async def _pip(self, *args: str) -> str:
        env = {
            **os.environ,
            "PIP_NO_INPUT": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pip",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), INSTALL_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise MarketplaceError(
                f"pip did not finish within {INSTALL_TIMEOUT_S:.0f} s", code="PLG003"
            ) from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise MarketplaceError(
                f"pip could not install the plugin: {tail[-1500:]}",
                code="PLG003",
                details={"output": tail},
            )
        return text


def _same(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.lower().replace("_", "-").replace(".", "-")

    return norm(a) == norm(b)


def current(app: Quart) -> Marketplace:
    """The app's marketplace (made on first use from the control plane's settings)."""
    found = app.extensions.get(EXTENSION)
    if found is None:
        from serverflow.controlplane import EXTENSION as CP

        cp: Any = app.extensions[CP]
        found = app.extensions[EXTENSION] = Marketplace(cp.settings, cp.plugins)
    assert isinstance(found, Marketplace)
    return found
