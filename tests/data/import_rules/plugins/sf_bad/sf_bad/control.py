"""Control-plane side that breaks every import rule (the import-rules test's fixture)."""

from serverflow.models import App  # core internals, not serverflow.plugin_api
from serverflow_contract.interfaces import ActionCall  # allowed

from sf_bad import shared  # pulls the agent side into the control plane
from sf_other import thing  # another plugin

__all__ = ["ActionCall", "App", "shared", "thing"]
