"""ServerFlow agent: the small process that runs on each managed server."""

from importlib.metadata import version

__version__ = version("serverflow-agent")  # one source: agent/pyproject.toml
