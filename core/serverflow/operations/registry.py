"""Every operation a plan can hold, by the name of the MCP tool that proposes it."""

from __future__ import annotations

from serverflow.operations.actions import RunAction
from serverflow.operations.apps import CreateApp, DeleteApp, UpdateApp
from serverflow.operations.deploys import DeployApp, RestartApp, RollbackApp
from serverflow.operations.operation import Operation
from serverflow.operations.servers import DeleteServer

OPERATIONS: dict[str, Operation] = {
    "create_app": CreateApp(),
    "update_app": UpdateApp(),
    "deploy_app": DeployApp(),
    "rollback_app": RollbackApp(),
    "restart_app": RestartApp(),
    "run_action": RunAction(),
    "delete_app": DeleteApp(),
    "delete_server": DeleteServer(),
}
