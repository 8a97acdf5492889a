"""Plugin discovery through packaging, and broken plugins that never take anything down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pluggy
import pytest

from serverflow.plugins import Plugins
from serverflow_contract import interfaces
from serverflow_contract.pluginhost import PluginHost
from serverflow_testkit.controlplane import ControlPlaneProcess, cli_env, run_cli

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "tests" / "data" / "broken_plugins"
hookimpl = pluggy.HookimplMarker("serverflow")


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


def listed(env: dict[str, str]) -> dict[str, dict[str, object]]:
    rows = json.loads(run_cli("plugins", "list", "--json", env=env).stdout)
    return {row["name"]: row for row in rows}


def test_runtime_pm2_is_discovered(tmp_path: Path) -> None:
    rows = listed(cli_env(tmp_path / "data"))
    pm2 = rows["runtime_pm2"]
    assert pm2["status"] == "enabled"
    assert pm2["version"] == "0.1.0"
    assert pm2["distribution"] == "serverflow-runtime-pm2"
    assert pm2["hooks"] == ["register_runtimes"]
    assert pm2["provides"] == {"runtimes": ["pm2"]}


def test_installing_and_uninstalling_a_plugin(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    direct_url = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    editable = any(
        '"editable": true' in (d / "direct_url.json").read_text()
        for d in direct_url.glob("serverflow_runtime_pm2-*.dist-info")
        if (d / "direct_url.json").exists()
    )
    try:
        pip("uninstall", "-y", "serverflow-runtime-pm2")
        assert "runtime_pm2" not in listed(env)
        pip("install", "--no-deps", "--no-build-isolation", str(ROOT / "plugins" / "runtime_pm2"))
        assert listed(env)["runtime_pm2"]["status"] == "enabled"
    finally:
        pip(
            "install",
            "--no-deps",
            "--no-build-isolation",
            *(["-e"] if editable else []),
            str(ROOT / "plugins" / "runtime_pm2"),
        )


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("broken-site")
    pip("install", "--no-deps", "--no-build-isolation", "--target", str(site), str(BROKEN))
    return site


EXPECTED_FAILURES = {
    "broken_import": "import failed: ModuleNotFoundError",
    "broken_hook": "hook register_runtimes raised RuntimeError: boom while registering",
    "bad_interface": "does not implement Runtime",
    "unknown_hook": "implements unknown hooks: register_spaceships",
    "zz_duplicate_runtime": "runtime 'pm2' from 'zz_duplicate_runtime' is already registered",
}


def test_broken_plugins_are_listed_as_failed(tmp_path: Path, broken_site: Path) -> None:
    env = cli_env(tmp_path / "data", PYTHONPATH=str(broken_site))
    rows = listed(env)
    for name, error in EXPECTED_FAILURES.items():
        assert rows[name]["status"] == "failed", name
        assert error in str(rows[name]["error"]), (name, rows[name]["error"])
        assert rows[name]["enabled"] is False
    assert rows["broken_import"]["version"] == "6.6.6"
    # The healthy plugin is untouched, and still owns "pm2".
    assert rows["runtime_pm2"]["status"] == "enabled"
    assert rows["runtime_pm2"]["provides"] == {"runtimes": ["pm2"]}
    text = run_cli("plugins", "list", env=env).stdout
    assert "[failed]" in text and "boom while registering" in text


def test_control_plane_runs_with_broken_plugins(tmp_path: Path, broken_site: Path) -> None:
    data = tmp_path / "data"
    env = {"PYTHONPATH": str(broken_site)}
    token = None
    run_cli("migrate", env=cli_env(data, **env))
    run_cli(
        "users",
        "create",
        "o@acme.test",
        "--new-org",
        "Acme",
        "--role",
        "owner",
        env=cli_env(data, **env),
    )
    token = json.loads(
        run_cli(
            "tokens", "create", "--org", "acme", "--name", "t", "--json", env=cli_env(data, **env)
        ).stdout
    )["token"]
    with ControlPlaneProcess(data, env=env) as cp:
        assert httpx.get(cp.url + "/readyz").status_code == 200
        rows = {
            p["name"]: p
            for p in httpx.get(
                cp.url + "/api/v1/plugins", headers={"Authorization": f"Bearer {token}"}
            ).json()["plugins"]
        }
        assert rows["clashing_blueprint"]["status"] == "failed"
        assert "blueprint 'api' rejected" in rows["clashing_blueprint"]["error"]
        assert rows["broken_hook"]["status"] == "failed"
        assert rows["runtime_pm2"]["status"] == "enabled"
        # The core API (the blueprint the plugin tried to shadow) still works.
        made = httpx.post(
            cp.url + "/api/v1/servers",
            json={"name": "web-1"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert made.status_code == 201
        assert "clashing_blueprint disabled" in cp.log()


def test_agent_lists_broken_agent_plugin(broken_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(broken_site)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from serverflow_agent.cli import main; import sys; sys.exit(main())",
            "actions",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout)
    failed = {p["name"]: p["error"] for p in out["failed_plugins"]}
    assert "agent-side plugin exploded" in failed["broken_actions"]
    assert "pm2.status" in {a["name"] for a in out["actions"]}


def test_disabled_plugin_is_not_imported(tmp_path: Path, broken_site: Path) -> None:
    env = cli_env(
        tmp_path / "data",
        PYTHONPATH=str(broken_site),
        SERVERFLOW_DISABLED_PLUGINS="broken_import,runtime_pm2",
    )
    rows = listed(env)
    assert rows["broken_import"]["status"] == "disabled"
    assert rows["broken_import"]["error"] is None
    assert rows["runtime_pm2"]["status"] == "disabled"
    assert rows["runtime_pm2"]["provides"] == {}


class _Runtime:
    name = "late"
    description = "fails when called later"

    def start(self, release: interfaces.Release) -> interfaces.ActionCall:
        return interfaces.ActionCall("x")

    stop = restart = delete = status = logs = start  # type: ignore[assignment]


class _EventPlugin:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.seen: list[object] = []

    @hookimpl
    def on_event(self, event: object) -> object:
        async def handle() -> None:
            if self.fail:
                raise RuntimeError("listener broke")
            self.seen.append(event)

        return handle()


async def test_a_hook_that_raises_later_disables_only_its_plugin() -> None:
    plugins = Plugins(load=False)
    good, bad = _EventPlugin(fail=False), _EventPlugin(fail=True)
    plugins.host.register(good, "good")
    plugins.host.register(bad, "bad")
    await plugins.host.acall("on_event", event="deploy.finished")
    await plugins.host.acall("on_event", event="server.online")
    assert good.seen == ["deploy.finished", "server.online"]
    assert plugins.host.info("bad").status == "failed"  # type: ignore[union-attr]
    assert "listener broke" in (plugins.host.info("bad").error or "")  # type: ignore[union-attr]
    assert plugins.host.is_enabled("good")


def test_registry_rejects_nameless_objects() -> None:
    from serverflow import hookspecs

    class Plugin:
        @hookimpl
        def register_runtimes(self, register: object) -> None:
            register(object())  # type: ignore[operator]

    host = PluginHost("serverflow", hookspecs)
    host.register(Plugin(), "nameless")
    from serverflow_contract.pluginhost import Registry

    registry: Registry[object] = host.collect("register_runtimes", Registry("runtime"))
    assert len(registry) == 0
    assert "has no name" in (host.info("nameless").error or "")  # type: ignore[union-attr]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.description = name


class _Templates:
    """Registers one object; `fail` makes its hook raise after registering it."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    @hookimpl
    def register_dashboard_panels(self, register: object) -> None:
        register(_Named(self.name))  # type: ignore[operator]
        if self.fail:
            raise RuntimeError(f"{self.name} broke")


class _Wrapper:
    """A new-style pluggy hook wrapper around every plugin's register_dashboard_panels."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.wrapped: list[str] = []

    @hookimpl(wrapper=True)
    def register_dashboard_panels(self, register: object) -> object:
        result = yield
        if self.fail:
            raise RuntimeError("the wrapper broke")
        self.wrapped.append("call")
        return result


def _panels_host(*plugins: tuple[str, object]) -> tuple[PluginHost, list[str]]:
    from serverflow import hookspecs
    from serverflow_contract.pluginhost import Registry

    host = PluginHost("serverflow", hookspecs)
    for name, plugin in plugins:
        host.register(plugin, name)
    registry: Registry[_Named] = host.collect("register_dashboard_panels", Registry("panel"))
    return host, registry.names()


def test_hook_wrappers_wrap_each_plugins_call() -> None:
    wrapper = _Wrapper()
    host, names = _panels_host(("a", _Templates("a")), ("b", _Templates("b")), ("w", wrapper))
    assert names == ["a", "b"]
    assert wrapper.wrapped == ["call", "call"]  # once around each plugin, as pluggy does
    assert all(host.is_enabled(n) for n in ("a", "b", "w"))


def test_a_raise_is_pinned_on_the_plugin_whose_code_raised() -> None:
    # A plain implementation raising through a wrapper: that plugin fails, not the wrapper.
    host, names = _panels_host(("a", _Templates("a", fail=True)), ("w", _Wrapper()))
    assert names == []
    assert "a broke" in (host.info("a").error or "")  # type: ignore[union-attr]
    assert host.is_enabled("w")
    # The wrapper raising around a good plugin: the wrapper fails, the plugin keeps its panel.
    host, names = _panels_host(("a", _Templates("a")), ("w", _Wrapper(fail=True)))
    assert "the wrapper broke" in (host.info("w").error or "")  # type: ignore[union-attr]
    assert host.is_enabled("a") and names == ["a"]


def test_trace_plugins_prints_hook_calls(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERVERFLOW_TRACE_PLUGINS", "1")
    _panels_host(("a", _Templates("a")))
    err = capfd.readouterr().err
    assert "register_dashboard_panels" in err and "finish register_dashboard_panels" in err
    monkeypatch.delenv("SERVERFLOW_TRACE_PLUGINS")
    _panels_host(("a", _Templates("a")))
    assert "register_dashboard_panels" not in capfd.readouterr().err
