"""Hatch build hook: compile the dashboard's message catalogs (.po -> .mo) at install time.

Runs for wheels and editable installs alike; the .mo files are written next to their .po
files (so an editable install finds them) and shipped in the wheel as artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

CATALOGS = "core/serverflow/translations"


class CompileCatalogs(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "sdist":
            return  # the sdist ships the .po sources; its wheel build compiles them
        from babel.messages import mofile, pofile

        for po in sorted(Path(self.root, CATALOGS).glob("*/LC_MESSAGES/*.po")):
            with po.open("rb") as fp:
                catalog = pofile.read_po(fp, locale=po.parent.parent.name)
            mo = po.with_suffix(".mo")
            partial = mo.with_suffix(".mo.partial")
            with partial.open("wb") as fp:
                mofile.write_mo(fp, catalog, use_fuzzy=False)
            partial.replace(mo)
            build_data["artifacts"].append("/" + mo.relative_to(self.root).as_posix())
