"""`serverflow-agent` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from serverflow_agent import __version__
from serverflow_agent.config import (
    DEFAULT_STATE_DIR,
    AgentConfig,
    ConfigError,
    ensure_state_dir,
    install_record_path,
    state_dir_from,
)
from serverflow_agent.plugins import AgentPlugins
from serverflow_contract import protocol


def _disabled() -> list[str]:
    raw = os.environ.get("SERVERFLOW_AGENT_DISABLED_PLUGINS", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _error(code: str, message: str) -> int:
    print(f"error [{code}]: {message}", file=sys.stderr)
    return 1


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs every connection failure with a traceback at INFO/ERROR; our own
    # lines already say what happened.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)


def _actions(args: argparse.Namespace) -> int:
    plugins = AgentPlugins(disabled=_disabled())
    rows = [
        {**spec.describe(), "plugin": plugins.actions.owner(spec.name)}
        for spec in sorted(plugins.actions, key=lambda s: s.name)
    ]
    failed = [p.as_dict() for p in plugins.host.plugins() if p.error]
    if args.json:
        print(json.dumps({"actions": rows, "failed_plugins": failed}, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<28} {row['kind']:<12} {row['plugin']:<16} {row['description']}")
    for p in failed:
        print(f"plugin {p['name']} failed: {p['error']}", file=sys.stderr)
    return 0


def _register(args: argparse.Namespace) -> int:
    from serverflow_agent.registration import RegistrationError, register

    token = args.token or os.environ.get("SERVERFLOW_AGENT_TOKEN")
    if not token:
        return _error("USAGE", "--token (or SERVERFLOW_AGENT_TOKEN) is required")
    state_dir = state_dir_from(args.state_dir)
    try:
        result = register(
            state_dir, args.url, token, pin=args.pin, ca_file=args.ca_file, force=args.force
        )
    except RegistrationError as exc:
        return _error(exc.code, exc.message)
    except OSError as exc:
        return _error("STATE", f"cannot write the agent state in {state_dir}: {exc}")
    config = result.config
    print(
        f"registered as server {config.server_id} (organisation {config.org_id})\n"
        f"agent key {protocol.key_id(result.public_key)}, "
        f"control plane key {protocol.key_id(config.control_plane_key)} pinned\n"
        f"state in {state_dir}; start the agent with: serverflow-agent run"
        + (f" --state-dir {state_dir}" if args.state_dir else "")
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from serverflow_agent.client import Agent
    from serverflow_agent.identity import IdentityError, load_identity
    from serverflow_agent.state import AgentState

    _setup_logging(args.verbose)
    state_dir = state_dir_from(args.state_dir)
    try:
        config = AgentConfig.load(state_dir)
        identity = load_identity(state_dir)
    except (ConfigError, IdentityError) as exc:
        return _error("STATE", str(exc))
    ensure_state_dir(state_dir)
    state = AgentState.open(state_dir)
    plugins = AgentPlugins(disabled=_disabled())
    log = logging.getLogger("serverflow_agent")
    for info in plugins.host.plugins():
        if info.error:
            log.error("plugin %s disabled: %s", info.name, info.error)
    log.info(
        "serverflow-agent %s starting: server %s, %d actions, state in %s",
        __version__,
        config.server_id,
        len(plugins.actions),
        state_dir,
    )
    agent = Agent(
        state_dir,
        config,
        identity,
        state,
        list(plugins.actions),
        renew_interval_s=_renew_interval(state_dir, log),
    )

    async def main() -> None:
        task = asyncio.ensure_future(agent.run_forever())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopping")

    try:
        asyncio.run(main())
    finally:
        state.close()
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from serverflow_agent.identity import create_pending, pending_path

    state_dir = state_dir_from(args.state_dir)
    try:
        AgentConfig.load(state_dir)
    except ConfigError as exc:
        return _error("STATE", str(exc))
    if pending_path(state_dir).exists() and not args.force:
        return _error(
            "PENDING",
            "a key rotation is already pending; the running agent sends it on its next "
            "heartbeat (use --force to replace the pending key)",
        )
    key = create_pending(state_dir, replace=args.force)
    print(
        f"new agent key {protocol.key_id(protocol.public_key_of(key))} is pending; the running "
        "agent offers it to the control plane on its next heartbeat and switches once accepted"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from serverflow_agent.identity import IdentityError, load_identity, load_pending
    from serverflow_agent.state import AgentState

    state_dir = state_dir_from(args.state_dir)
    try:
        config = AgentConfig.load(state_dir)
        public_key = protocol.public_key_of(load_identity(state_dir))
        pending = load_pending(state_dir)
    except (ConfigError, IdentityError) as exc:
        return _error("STATE", str(exc))
    state = AgentState.open(state_dir)
    try:
        registry = state.registry()
        nonces = state.nonce_count()
    finally:
        state.close()
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "server_id": config.server_id,
        "org_id": config.org_id,
        "url": config.url,
        "ws_url": config.ws_url,
        "agent_public_key": public_key,
        "agent_key_id": protocol.key_id(public_key),
        "pending_agent_key_id": (
            protocol.key_id(protocol.public_key_of(pending)) if pending else None
        ),
        "control_plane_key": config.control_plane_key,
        "control_plane_key_id": protocol.key_id(config.control_plane_key),
        "tls_pin": config.tls_pin,
        "registry_version": registry.version if registry else None,
        "registry_actions": sorted(registry.actions) if registry else [],
        "replay_cache_entries": nonces,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in (
        "state_dir",
        "server_id",
        "org_id",
        "url",
        "ws_url",
        "agent_key_id",
        "pending_agent_key_id",
        "control_plane_key_id",
        "tls_pin",
        "registry_version",
        "replay_cache_entries",
    ):
        print(f"{key:<22} {data[key] if data[key] is not None else '-'}")
    return 0


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        help="agent state directory (default: $SERVERFLOW_AGENT_STATE_DIR, else the one "
        f"install.sh recorded in {install_record_path()}, else {DEFAULT_STATE_DIR})",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serverflow-agent")
    parser.add_argument("--version", action="version", version=f"serverflow-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    register = sub.add_parser("register", help="register this server with a control plane")
    register.add_argument("--url", required=True, help="control plane URL, http(s)://host:port")
    register.add_argument("--token", help="one-time install token (or SERVERFLOW_AGENT_TOKEN)")
    register.add_argument("--pin", help="TLS public key pin, sha256/<base64>")
    register.add_argument("--ca-file", help="CA bundle to verify the control plane with")
    register.add_argument("--force", action="store_true", help="register again with a new key")
    _state_dir_option(register)
    register.set_defaults(func=_register)

    run = sub.add_parser("run", help="connect to the control plane and serve it (forever)")
    run.add_argument("-v", "--verbose", action="store_true")
    _state_dir_option(run)
    run.set_defaults(func=_run)

    rotate = sub.add_parser("rotate-key", help="make a new agent key and have it accepted")
    rotate.add_argument("--force", action="store_true", help="replace a pending key")
    _state_dir_option(rotate)
    rotate.set_defaults(func=_rotate_key)

    status = sub.add_parser("status", help="show the registration and local state")
    status.add_argument("--json", action="store_true")
    _state_dir_option(status)
    status.set_defaults(func=_status)

    actions = sub.add_parser("actions", help="list the actions this agent can run")
    actions.add_argument("--json", action="store_true")
    actions.set_defaults(func=_actions)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # an unreadable install record (state_dir_from)
        return _error("STATE", str(exc))


if __name__ == "__main__":
    sys.exit(main())


def _renew_interval(state_dir: Path, log: logging.Logger) -> float | None:
    """Seconds between certificate renewal checks (acme.renew_check_hours), None for off."""
    from serverflow_agent.deploy.settings import DeploySettings

    try:
        hours = DeploySettings.load(state_dir).acme.renew_check_hours
    except ConfigError as exc:
        log.error("certificate renewal is off: %s", exc)
        return None
    return hours * 3600 if hours > 0 else None
