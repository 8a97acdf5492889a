"""`serverflow-agent` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from serverflow_agent import __version__
from serverflow_agent.plugins import AgentPlugins


def _disabled() -> list[str]:
    raw = os.environ.get("SERVERFLOW_AGENT_DISABLED_PLUGINS", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serverflow-agent")
    parser.add_argument("--version", action="version", version=f"serverflow-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    actions = sub.add_parser("actions", help="list the actions this agent can run")
    actions.add_argument("--json", action="store_true")
    actions.set_defaults(func=_actions)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
