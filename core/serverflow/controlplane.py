"""The state one control-plane app carries: settings, keys, plugins. Reached via `current()`."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app

from serverflow.keys import AppKeys
from serverflow.plugins import Plugins
from serverflow.settings import Settings

EXTENSION = "serverflow"


@dataclass
class ControlPlane:
    settings: Settings
    keys: AppKeys
    plugins: Plugins


def current() -> ControlPlane:
    cp: ControlPlane = current_app.extensions[EXTENSION]
    return cp
