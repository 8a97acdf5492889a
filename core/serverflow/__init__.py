"""ServerFlow control plane."""

from importlib.metadata import version

__version__ = version("serverflow")  # one source: pyproject.toml
