"""PM2 runtime for ServerFlow."""

__version__ = "0.1.0"
