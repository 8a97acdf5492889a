"""Plannable operations: a dry run that proposes a change, and an execution that does it.

- `operation.py`: what an operation is (`Operation`, `Actor`, `Proposal`, `Outcome`).
- `registry.py`: every operation a plan can hold, by name: `deploys.py` (deploy, rollback,
  restart), `apps.py` (create, update, delete), `actions.py` (registry actions),
  `servers.py` (delete), with `documents.py` previewing desired-state documents.

`serverflow.plans` keeps the plans' lifecycle. The MCP endpoint is a surface on top of
both: nothing here imports a surface (api, web, mcp; `tests/test_layers.py` checks).
"""
