"""Wheels of the agent and its plugins, built from what this control plane has installed.

Servers install exactly the agent code the control plane runs (same versions, including
agent-side plugins), downloaded from the control plane itself: no package index needed
for ServerFlow's own code, and editable development installs work too.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata as metadata
import importlib.util
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

AGENT_DISTRIBUTION = "serverflow-agent"
AGENT_GROUP = "serverflow_agent"


@dataclass(frozen=True)
class Wheel:
    filename: str
    data: bytes


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def top_packages(dist: metadata.Distribution) -> list[str]:
    """The import packages a distribution installs (serverflow-agent has two: the agent and
    the contract): from its file list, or for an editable install from the folders its
    .pth file puts on sys.path; plus the packages its entry points name."""
    names = {_normalize(dist.metadata["Name"])}
    names.update(ep.value.split(":")[0].split(".")[0] for ep in dist.entry_points)
    for file in dist.files or []:
        if len(file.parts) == 2 and file.parts[1] == "__init__.py":
            names.add(file.parts[0])
        elif len(file.parts) == 1 and file.suffix == ".pth":
            for line in Path(str(file.locate())).read_text().splitlines():
                folder = Path(line.strip())
                if line.strip() and not line.startswith(("#", "import")) and folder.is_dir():
                    names.update(init.parent.name for init in folder.glob("*/__init__.py"))
    names.discard("tests")
    found = []
    for name in sorted(names):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found.append(name)
    return found


def agent_distributions() -> list[metadata.Distribution]:
    """serverflow-agent plus every installed distribution with agent-side plugins."""
    dists = {AGENT_DISTRIBUTION: metadata.distribution(AGENT_DISTRIBUTION)}
    for ep in metadata.entry_points(group=AGENT_GROUP):
        if ep.dist is not None:
            dists.setdefault(ep.dist.metadata["Name"], ep.dist)
    return list(dists.values())


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(dist: metadata.Distribution) -> Wheel:
    name, version = dist.metadata["Name"], dist.version
    stem = f"{_normalize(name)}-{version}"
    files: dict[str, bytes] = {}
    for package in top_packages(dist):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[f"{package}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    info = f"{stem}.dist-info"
    files[f"{info}/METADATA"] = (dist.read_text("METADATA") or "").encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: serverflow\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(
                zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0)),
                data,
                compress_type=zipfile.ZIP_DEFLATED,
            )
    return Wheel(filename=f"{stem}-py3-none-any.whl", data=buffer.getvalue())


@functools.cache
def agent_wheels() -> dict[str, Wheel]:
    """Built once per process (the installed code does not change while it runs)."""
    wheels = [build_wheel(dist) for dist in agent_distributions()]
    return {w.filename: w for w in wheels}
