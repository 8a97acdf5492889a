from serverflow_agent.hookspecs import hookimpl


@hookimpl
def register_actions(register):
    raise ValueError("agent-side plugin exploded")
