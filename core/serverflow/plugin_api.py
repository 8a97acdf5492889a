"""What a control-plane plugin may use of the control plane, besides `serverflow_contract`.

A plugin that only describes and plans (a runtime, a template) needs the contract alone
(`serverflow_contract.interfaces`, with its `hookimpl`) and so installs on servers without
the control plane. A plugin that needs the running control plane (routes, pages) imports
this module, nothing else of `serverflow` (a test checks it), and depends on `serverflow`.
"""

from __future__ import annotations

from serverflow.hookspecs import Register, hookimpl

__all__ = ["Register", "hookimpl"]
