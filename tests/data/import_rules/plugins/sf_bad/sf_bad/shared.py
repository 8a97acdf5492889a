from serverflow_agent.plugin_api import hookimpl  # agent side, reached from control.py

__all__ = ["hookimpl"]
