"""Settings layers: defaults, then the TOML file, then SERVERFLOW_* variables, then overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from serverflow.errors import ConfigError
from serverflow.settings import Settings, load_settings


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def _env(data: Path, **variables: str) -> dict[str, str]:
    return {"SERVERFLOW_DATA_DIR": str(data), **variables}


def test_each_layer_overrides_the_one_below(data: Path) -> None:
    default = Settings.model_fields["heartbeat_interval_ms"].default
    assert load_settings(_env(data)).heartbeat_interval_ms == default == 5000

    (data / "serverflow.toml").write_text("heartbeat_interval_ms = 2000\nlog_level = 'debug'\n")
    from_file = load_settings(_env(data))
    assert from_file.heartbeat_interval_ms == 2000
    assert from_file.log_level == "DEBUG"  # upper-cased, whichever layer it comes from
    assert from_file.config_file == data / "serverflow.toml"

    env = _env(data, SERVERFLOW_HEARTBEAT_INTERVAL_MS="1000")
    from_env = load_settings(env)
    assert from_env.heartbeat_interval_ms == 1000
    assert from_env.log_level == "DEBUG"  # still from the file: the environment does not set it

    assert load_settings(env, heartbeat_interval_ms=750).heartbeat_interval_ms == 750


def test_values_are_parsed_the_same_in_every_layer(data: Path) -> None:
    (data / "serverflow.toml").write_text(
        'disabled_plugins = "a, b"\ntls_certfile = "/etc/c.pem"\n'
    )
    from_file = load_settings(_env(data))
    assert from_file.disabled_plugins == ("a", "b")
    assert from_file.tls_certfile == Path("/etc/c.pem")
    (data / "serverflow.toml").write_text('disabled_plugins = ["x", "y"]\n')
    assert load_settings(_env(data)).disabled_plugins == ("x", "y")
    from_env = load_settings(
        _env(data, SERVERFLOW_DISABLED_PLUGINS="c,,d ", SERVERFLOW_LOG_LEVEL="warning")
    )
    assert from_env.disabled_plugins == ("c", "d")
    assert from_env.log_level == "WARNING"


def test_environment_details(tmp_path: Path, data: Path) -> None:
    (data / "serverflow.toml").write_text("port = 9000\n")
    # Empty variables are unset; only the exact upper-case names count; other SERVERFLOW_*
    # variables (the CLI's SERVERFLOW_TOKEN...) are not settings and are ignored.
    env = _env(
        data,
        SERVERFLOW_PORT="",
        serverflow_host="0.0.0.0",
        SERVERFLOW_TOKEN="sf_x",
        SERVERFLOW_CONFIG_FILE="/elsewhere.toml",
    )
    settings = load_settings(env)
    assert (settings.port, settings.host) == (9000, "127.0.0.1")
    assert settings.config_file == data / "serverflow.toml"
    # SERVERFLOW_CONFIG names another file; the data dir's file is then not read.
    other = tmp_path / "other.toml"
    other.write_text("port = 9333\n")
    chosen = load_settings(_env(data, SERVERFLOW_CONFIG=str(other)))
    assert (chosen.port, chosen.config_file) == (9333, other)
    # Without SERVERFLOW_DATA_DIR: $XDG_DATA_HOME/serverflow, and its serverflow.toml.
    xdg = tmp_path / "xdg"
    (xdg / "serverflow").mkdir(parents=True)
    (xdg / "serverflow" / "serverflow.toml").write_text("port = 9444\n")
    home = load_settings({"XDG_DATA_HOME": str(xdg)})
    assert (home.data_dir, home.port) == (xdg / "serverflow", 9444)


@pytest.mark.parametrize(
    ("toml", "env", "overrides", "expected"),
    [
        ("port = 70000\n", {}, {}, "port: Input should be less than or equal to 65535"),
        ("", {"SERVERFLOW_PORT": "eighty"}, {}, "port: Input should be a valid integer"),
        ("", {}, {"port": 0}, "port: Input should be greater than or equal to 1"),
        ("log_level = 'loud'\n", {}, {}, "log_level: Input should be 'DEBUG'"),
        ("", {"SERVERFLOW_LOG_FORMAT": "xml"}, {}, "log_format: Input should be 'text' or 'json'"),
        ("", {"SERVERFLOW_HEARTBEAT_INTERVAL_MS": "5"}, {}, "heartbeat_interval_ms: Input"),
        ("bogus = 1\n", {}, {}, "bogus: Extra inputs are not permitted"),
        ("PORT = 1\n", {}, {}, "PORT: Extra inputs are not permitted"),  # names are lower case
    ],
)
def test_a_bad_value_in_any_layer_is_a_config_error_naming_it(
    data: Path, toml: str, env: dict[str, str], overrides: dict[str, object], expected: str
) -> None:
    (data / "serverflow.toml").write_text(toml)
    with pytest.raises(ConfigError, match="invalid configuration: .*" + expected) as err:
        load_settings(_env(data, **env), **overrides)
    assert err.value.code == "CFG001"


def test_every_problem_is_reported_at_once(data: Path) -> None:
    (data / "serverflow.toml").write_text("port = 'eighty'\nbogus = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(_env(data, SERVERFLOW_MAX_BODY_BYTES="5"))
    assert "port:" in err.value.message
    assert "bogus:" in err.value.message
    assert "max_body_bytes:" in err.value.message


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path, data: Path) -> None:
    toml = data / "serverflow.toml"
    toml.write_text("port = [")
    with pytest.raises(ConfigError, match=f"cannot read config file {toml}"):
        load_settings(_env(data))
    toml.write_bytes(b'host = "\xff"\n')
    with pytest.raises(ConfigError, match=f"cannot read config file {toml}"):
        load_settings(_env(data))
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        load_settings(_env(data, SERVERFLOW_CONFIG=str(missing)))


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    env = {"SERVERFLOW_DATA_DIR": str(tmp_path), "SERVERFLOW_TRUSTED_PROXIES": "127.0.0.1, ::1"}
    assert load_settings(env).trusted_proxies == ("127.0.0.1", "::1")
    with pytest.raises(ConfigError, match="'nginx' is not an IP address or network"):
        load_settings({**env, "SERVERFLOW_TRUSTED_PROXIES": "10.0.0.0/8,nginx"})


def test_the_client_behind_a_trusted_proxy_is_the_rightmost_untrusted_hop() -> None:
    from serverflow.auth import forwarded_client

    trusted = ("127.0.0.1", "10.0.0.0/8")
    # nginx on 127.0.0.1 appended the address it saw.
    assert forwarded_client("127.0.0.1", ["203.0.113.9"], trusted) == "203.0.113.9"
    # A client's own X-Forwarded-For is not believed: only what our proxies appended.
    assert forwarded_client("127.0.0.1", ["6.6.6.6, 203.0.113.9"], trusted) == "203.0.113.9"
    assert forwarded_client("127.0.0.1", ["6.6.6.6", "10.1.2.3"], trusted) == "6.6.6.6"
    # Not from a trusted proxy: the header is ignored.
    assert forwarded_client("198.51.100.1", ["6.6.6.6"], trusted) == "198.51.100.1"
    # Garbage in the header is an untrusted hop like any other, never a crash.
    assert forwarded_client("127.0.0.1", ["not-an-ip"], trusted) == "not-an-ip"
