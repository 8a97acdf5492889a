"""Entry-point plugin loading where a broken plugin is reported and disabled, never fatal.

Both the control plane and the agent load their plugins through `PluginHost`; only the
pluggy project name, the hookspec module and the entry-point group differ. Hooks are called
through pluggy (so its tracing and hook wrappers apply), one plugin at a time, so that the
plugin whose hook raises is the one disabled. `SERVERFLOW_TRACE_PLUGINS=1` prints every
hook call and its result to stderr.
"""

from __future__ import annotations

import importlib.metadata as metadata
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistrationError(Exception):
    """A plugin registered something invalid (wrong interface, duplicate name)."""


@dataclass
class PluginInfo:
    """What `plugins list` shows for one plugin."""

    name: str
    module: str
    version: str | None = None
    distribution: str | None = None
    description: str | None = None
    hooks: list[str] = field(default_factory=list)
    enabled: bool = True
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "enabled" if self.enabled else "disabled"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


class Registry(Generic[T]):
    """Objects of one kind registered by plugins, keyed by their `name` attribute."""

    def __init__(self, kind: str, interface: type | None = None) -> None:
        self.kind = kind
        self.interface = interface
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, obj: T, plugin: str) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"{self.kind} registered by {plugin!r} has no name")
        if self.interface is not None and not isinstance(obj, self.interface):
            raise RegistrationError(
                f"{self.kind} {name!r} registered by {plugin!r} does not implement "
                f"{self.interface.__name__}"
            )
        if name in self._items:
            raise RegistrationError(
                f"{self.kind} {name!r} from {plugin!r} is already registered by "
                f"{self._owners[name]!r}"
            )
        self._items[name] = obj
        self._owners[name] = plugin

    def drop_plugin(self, plugin: str) -> None:
        for name in [n for n, owner in self._owners.items() if owner == plugin]:
            del self._items[name]
            del self._owners[name]

    def owner(self, name: str) -> str:
        return self._owners[name]

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


TRACE_ENV = "SERVERFLOW_TRACE_PLUGINS"


class PluginHost:
    """A pluggy PluginManager that isolates failures plugin by plugin."""

    def __init__(self, project: str, hookspecs: ModuleType, disabled: Iterable[str] = ()) -> None:
        self.project = project
        self.pm = pluggy.PluginManager(project)
        self.pm.add_hookspecs(hookspecs)
        if os.environ.get(TRACE_ENV, "") not in ("", "0"):
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        self.disabled = set(disabled)
        self._info: dict[str, PluginInfo] = {}
        self._shadowed: list[PluginInfo] = []  # same name as an earlier plugin: never loaded
        self._registries: list[Registry[Any]] = []

    # -- loading -------------------------------------------------------------------

    def load_entrypoints(self, group: str | None = None) -> None:
        """Load every plugin advertised in the entry-point group (default: the project)."""
        for ep in sorted(metadata.entry_points(group=group or self.project), key=lambda e: e.name):
            dist = ep.dist
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                version=dist.version if dist else None,
                distribution=dist.metadata["Name"] if dist else None,
                description=(dist.metadata["Summary"] if dist else None) or None,
            )
            if ep.name in self._info:
                info.enabled = False
                info.error = (
                    f"duplicate plugin name {ep.name!r}; "
                    f"already provided by {self._info[ep.name].module}"
                )
                log.error("plugin %s (%s) not loaded: %s", ep.name, ep.value, info.error)
                self._shadowed.append(info)
                continue
            self._info[ep.name] = info
            if ep.name in self.disabled:
                info.enabled = False  # not even imported: a disabled plugin runs no code
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._mark_failed(ep.name, f"import failed: {_describe(exc)}")
                continue
            self._add(plugin, info)

    def register(self, plugin: object, name: str, version: str | None = None) -> PluginInfo:
        """Register an already imported plugin object (used for tests and built-ins)."""
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name=name, module=str(module), version=version)
        self._info[name] = info
        self._add(plugin, info)
        return info

    def _add(self, plugin: object, info: PluginInfo) -> None:
        info.hooks = sorted(
            n for n in dir(plugin) if self.pm.parse_hookimpl_opts(plugin, n) is not None
        )
        if info.name in self.disabled:
            info.enabled = False
            return
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            self._mark_failed(info.name, f"invalid plugin: {_describe(exc)}")
            return
        unknown = [hc.name for hc in self.pm.get_hookcallers(plugin) or [] if hc.spec is None]
        if unknown:
            self._mark_failed(info.name, f"implements unknown hooks: {', '.join(unknown)}")

    def fail(self, name: str, error: str) -> None:
        """Disable a plugin that misbehaved after loading (e.g. its blueprint clashed)."""
        self._mark_failed(name, error)

    def _mark_failed(self, name: str, error: str) -> None:
        info = self._info[name]
        info.enabled = False
        info.error = error
        log.error("plugin %s disabled: %s", name, error)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        for registry in self._registries:
            registry.drop_plugin(name)

    # -- calling -------------------------------------------------------------------

    def _each(self, hook_name: str, only: str | None = None) -> Iterator[tuple[str, Any]]:
        """(plugin, its caller) for each plugin implementing the hook, in load order.

        Each caller is pluggy's own hook caller narrowed to that plugin's implementation
        and every plugin's hook wrapper, so wrappers wrap each call and a raise can be
        pinned on one plugin (`_culprit`).
        """
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        plain = [i.plugin_name for i in impls if not (i.wrapper or i.hookwrapper)]
        for name in plain:
            if only is not None and name != only:
                continue
            others = [self.pm.get_plugin(n) for n in plain if n != name]
            yield name, self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _culprit(self, hook_name: str, caller_of: str, exc: BaseException) -> str:
        """The plugin whose code raised: the innermost traceback frame that runs one of the
        hook's implementations (a wrapper's, say), else the plugin being called."""
        codes = {
            getattr(impl.function, "__code__", None): impl.plugin_name
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls()
        }
        culprit = caller_of
        tb = exc.__traceback__
        while tb is not None:
            culprit = codes.get(tb.tb_frame.f_code, culprit)
            tb = tb.tb_next
        return culprit

    def _fail_call(self, hook_name: str, plugin: str, exc: BaseException) -> None:
        self._mark_failed(
            self._culprit(hook_name, plugin, exc), f"hook {hook_name} raised {_describe(exc)}"
        )

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook; one that raises disables its plugin."""
        results: list[tuple[str, Any]] = []
        for plugin, caller in self._each(hook_name):
            if self.pm.get_plugin(plugin) is None:  # disabled by an earlier failure
                continue
            try:
                outcome = caller(**kwargs)
            except Exception as exc:
                self._fail_call(hook_name, plugin, exc)
                continue
            results.extend((plugin, value) for value in outcome)
        return results

    async def acall(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Like `call`, awaiting implementations that return awaitables."""
        results: list[tuple[str, Any]] = []
        for plugin, result in self.call(hook_name, **kwargs):
            if inspect.isawaitable(result):
                try:
                    result = await result
                except Exception as exc:
                    self._mark_failed(plugin, f"hook {hook_name} raised {_describe(exc)}")
                    continue
            results.append((plugin, result))
        return results

    def collect(
        self, hook_name: str, registry: Registry[T], only: str | None = None, **kwargs: Any
    ) -> Registry[T]:
        """Fill `registry` through a `register_*(register, ...)` hook (of one plugin: `only`).

        A plugin whose hook raises, or registers something invalid, is disabled and what it
        registered is dropped from every registry.
        """
        if registry not in self._registries:
            self._registries.append(registry)
        for plugin, caller in self._each(hook_name, only):

            def register(obj: T, _plugin: str = plugin) -> None:
                registry.add(obj, _plugin)

            try:
                caller(register=register, **kwargs)
            except Exception as exc:
                self._fail_call(hook_name, plugin, exc)
        return registry

    # -- reporting -----------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        return sorted([*self._info.values(), *self._shadowed], key=lambda i: (i.name, i.module))

    def info(self, name: str) -> PluginInfo | None:
        return self._info.get(name)

    def is_enabled(self, name: str) -> bool:
        info = self._info.get(name)
        return bool(info and info.enabled and not info.error)


Register = Callable[[Any], None]
