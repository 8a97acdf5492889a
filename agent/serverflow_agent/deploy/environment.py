"""The environments of the programs a deploy runs: git, builds, and the apps themselves.

None of them inherits the agent's own environment wholesale (it may hold the agent's
settings or secrets): they get a small base (PATH, HOME, locale, proxy settings) plus
what the app entry asks for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PASSED_THROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PYENV_ROOT",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root" if os.geteuid() == 0 else "/tmp")  # noqa: S108
    env.setdefault("LANG", "C.UTF-8")
    return env


def git_env() -> dict[str, str]:
    env = base_env()
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
            "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",  # no ext::, fd:: or helpers
            "GIT_CONFIG_PARAMETERS": "'protocol.ext.allow'='never'",
            "LC_ALL": "C",
        }
    )
    env["GIT_SSH_COMMAND"] = os.environ.get(
        "GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
    )
    return env


def app_env(release_dir: Path, env: Mapping[str, str], port: int | None) -> dict[str, str]:
    """What builds and the app's process see: the base, the app's env, PORT, and a PATH
    that starts with the release's .venv/bin and node_modules/.bin."""
    result = base_env()
    result.update(env)
    result["PATH"] = os.pathsep.join(
        [
            str(release_dir / ".venv" / "bin"),
            str(release_dir / "node_modules" / ".bin"),
            base_env()["PATH"],
        ]
    )
    if port is not None:
        result["PORT"] = str(port)
    # npm: no audit, funding or update checks (they go to the network and print noise).
    for key in ("NPM_CONFIG_AUDIT", "NPM_CONFIG_FUND", "NPM_CONFIG_UPDATE_NOTIFIER"):
        result.setdefault(key, "false")
    return result
