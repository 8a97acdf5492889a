from serverflow_agent.plugin_api import hookimpl  # allowed


def later() -> None:
    from serverflow_agent.deploy.settings import DeploySettings  # agent internals

    print(hookimpl, DeploySettings)
