"""ServerFlow agent: the small process that runs on each managed server."""

__version__ = "0.1.0"
