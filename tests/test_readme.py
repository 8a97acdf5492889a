"""The README, followed word for word as a new user would: its ```sh blocks, in order.

What runs:
- Every ```sh fence, in the README's order, in ONE bash session started at the checkout's
  root (variables, `cd` and `export` carry over from block to block), with `set -e -o
  pipefail`: the first failing command fails the test, naming its README line.
- A marker on the line directly before a fence changes that:
  `<!-- doctest: background, wait URL -->` runs the block in the background (a server
  such as `./scripts/run`) and goes on once URL answers 2xx (bash expands $VARIABLES in
  URL); `<!-- doctest: skip (REASON) -->` does not run it, and the test report shows it
  as a skipped test with REASON (`-ra`). Any other marker, or one not followed by a
  ```sh fence, fails.
- Other fences (```text, ```sql, ```json...) are reference material and never run.

Where it runs: a new user's machine, without touching this one. The session runs in a
PID and mount namespace (serverflow_testkit.agent_install.Host, PID 1 a plain shell, so
not systemd) in which /etc, /opt, /usr, /var, /root, /home and the checkout itself are
overlays whose writes land in a temp dir, and /run is empty. HOME, TMPDIR and
SERVERFLOW_DATA_DIR are temp dirs, PATH holds no virtualenv, SERVERFLOW_PORT is a free
port and SERVERFLOW_APP_PORTS a random range: commands take the control plane's address
from the CLI rather than write 127.0.0.1:8000 (comments may show it). The network is the
host's (pip needs an index), so one session runs at a time (a lock) and port 80 must be
free for the server's nginx. At the end, killing the namespace's PID 1 stops everything
the README started (control plane, agent, pm2, the app), and a file the README wrote
into the checkout (beyond .venv and what .gitignore ignores) fails the test.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from serverflow_testkit import free_port, missing
from serverflow_testkit.deploy import port_range

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->$")
BACKGROUND = re.compile(r"^background,\s*wait\s+(\S+)$")
SKIP = re.compile(r"^skip\s+\((.+)\)$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
# System directories the README may write to (the agent's installer does): overlays.
OVERLAID = ("/etc", "/opt", "/usr", "/var", "/root", "/home")
SESSION_TIMEOUT = 600  # s; the README takes about a minute here
GREETING = "Hello from ServerFlow!"  # what the sample app answers (examples/hello)


@dataclass(frozen=True)
class Block:
    line: int  # the README line of the fence
    code: str
    mode: str = "run"  # run | background | skip
    wait: str = ""  # background: the URL to wait for
    reason: str = ""  # skip: why

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0] if self.code.strip() else ""


def parse(text: str) -> list[Block]:
    """The ```sh blocks of `text`, each with what its marker says."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            marker = MARKER.match(lines[i].strip())
            if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                raise AssertionError(
                    f"README.md:{i + 1}: a doctest marker must be directly followed by a "
                    "```sh fence"
                )
            i += 1
            continue
        opening, language = fence.group(1), fence.group(2)
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(opening)), None
        )
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: the fence is never closed")
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        if marker and language != "sh":
            raise AssertionError(
                f"README.md:{i + 1}: a doctest marker on a ```{language} fence (only ```sh runs)"
            )
        if language == "sh":
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(block_of(i + 1, code, marker.group(1) if marker else None))
        i = end + 1
    return blocks


def block_of(line: int, code: str, directive: str | None) -> Block:
    if directive is None:
        return Block(line, code)
    if background := BACKGROUND.match(directive):
        url = background.group(1)
        if re.search(r'["`\\]|\$\(', url):
            raise AssertionError(f"README.md:{line}: the wait URL {url!r} must be a plain URL")
        return Block(line, code, "background", wait=url)
    if skip := SKIP.match(directive):
        return Block(line, code, "skip", reason=skip.group(1))
    raise AssertionError(
        f"README.md:{line}: unknown doctest marker {directive!r} (use 'background, wait URL' "
        "or 'skip (REASON)')"
    )


BLOCKS = parse(README.read_text())

PRELUDE = r"""
set -e -o pipefail
__sf_block=start
trap '__sf_rc=$?; echo "### FAILED: $__sf_block, line $LINENO of the block (exit $__sf_rc)"' ERR
__sf_show() { echo; echo "### $1"; sed 's/^/$ /' "$2"; echo "### output"; }
__sf_wait() {  # __sf_wait URL PID LOG
  local i
  for ((i = 0; i < 3000; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "### the background block exited before $1 answered; its output:"; cat "$3"
      return 1
    fi
    sleep 0.1
  done
  echo "### $1 did not answer within 300 s; the block's output:"; cat "$3"
  return 1
}
"""


def session_script(blocks: list[Block], work: Path) -> str:
    """One bash script that runs the blocks as a user types them into one terminal."""
    parts = [PRELUDE, f"cd {shlex.quote(str(ROOT))}\n"]
    for n, block in enumerate(blocks):
        if block.mode == "skip":
            continue
        path = work / f"block-{n}.sh"
        path.write_text(block.code)
        where, quoted = shlex.quote(block.where), shlex.quote(str(path))
        parts.append(f"__sf_block={where}; __sf_show {where} {quoted}; __sf_t=$SECONDS\n")
        if block.mode == "background":
            log = shlex.quote(str(work / f"block-{n}.log"))
            parts.append(
                f"( source {quoted} ) > {log} 2>&1 < /dev/null &\n"
                f'__sf_wait "{block.wait}" $! {log}\n'
                f'echo "### {block.where} runs in the background; {block.wait} answers"\n'
            )
        else:
            parts.append(f"source {quoted}\n")
        parts.append(f'echo "### done: {block.where} in $((SECONDS - __sf_t)) s"\n')
    parts.append('echo "### END"\n')
    return "".join(parts)


def session_env(work: Path) -> dict[str, str]:
    """A new user's environment: nothing of this test run, a temp HOME, a free port."""
    home = work / "home"
    home.mkdir()
    tmp = work / "tmp"
    tmp.mkdir()
    # The machine's package mirror configuration (pip reads it from HOME) comes along.
    for config in (".config/pip/pip.conf", ".pip/pip.conf"):
        source = Path.home() / config
        if source.is_file():
            (home / config).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, home / config)
    venvs = {str(ROOT / ".venv" / "bin"), os.path.dirname(sys.executable)}
    path = [p for p in os.environ.get("PATH", "").split(":") if p and p not in venvs]
    for needed in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if needed not in path:
            path.append(needed)
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")
    }
    env.update(
        PATH=":".join(path),
        HOME=str(home),
        TMPDIR=str(tmp),
        LANG="C.UTF-8",
        TERM="dumb",
        SERVERFLOW_PORT=str(free_port()),
        SERVERFLOW_APP_PORTS="{}-{}".format(*port_range(100)),
        SERVERFLOW_DATA_DIR=str(home / ".local" / "share" / "serverflow"),
    )
    return env


def overlay_script(work: Path) -> str:
    """Mount the overlays (changes go to `work`) and an empty /run, inside the namespace."""
    lines = []
    for n, target in enumerate([*OVERLAID, str(ROOT)]):
        if not Path(target).is_dir():
            continue
        upper, scratch = work / "overlay" / str(n) / "upper", work / "overlay" / str(n) / "work"
        upper.mkdir(parents=True)
        scratch.mkdir(parents=True)
        (work / "overlay" / str(n) / "target").write_text(target)
        lines.append(
            f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={scratch} "
            f"{target}"
        )
    # A boot without systemd and without this machine's pid files (/run/nginx.pid...).
    lines.append("mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/lock")
    return "\n".join(lines) + "\n"


def written_into_checkout(work: Path) -> list[str]:
    """Files the session created, changed or deleted in the checkout, that git would show."""
    base = next(d for d in (work / "overlay").iterdir() if (d / "target").read_text() == str(ROOT))
    upper = base / "upper"
    found = []
    for path in upper.rglob("*"):
        relative = path.relative_to(upper)
        if relative.parts[0] == ".venv" or path.is_dir():
            continue
        deleted = stat.S_ISCHR(path.lstat().st_mode)  # an overlay whiteout
        found.append(("deleted " if deleted else "") + str(relative))
    if not found:
        return []
    names = [f.removeprefix("deleted ") for f in found]
    ignored = subprocess.run(
        ["git", "check-ignore", "--stdin"],
        cwd=ROOT,
        input="\n".join(names),
        capture_output=True,
        text=True,
    ).stdout.split()
    return [f for f in found if f.removeprefix("deleted ") not in ignored]


def summary(log: str) -> str:
    """The blocks' durations, for the report."""
    return "\n".join(
        re.findall(r"^### (done: .*|README\.md:\d+ runs in the background.*)$", log, re.M)
    )


def port_80_taken() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 80), timeout=1):
            return True
    except OSError:
        return False


def run_session(work: Path) -> tuple[int, str]:
    """The README's blocks in one bash session inside a fresh sandbox: its exit status and
    output (stdout and stderr together, as in a terminal)."""
    from serverflow_testkit.agent_install import Host

    script = work / "session.sh"
    script.write_text(session_script(BLOCKS, work))
    lines: list[str] = []
    with Host() as host:
        host.sh(overlay_script(work))
        # A pipe, not a file: `tee /dev/stderr` reopens a file (and truncates it). The
        # session's end is its exit, not EOF: what the README starts may keep the pipe.
        session = subprocess.Popen(
            ["nsenter", f"--target={host.pid1}", "--pid", "--mount", "--", "bash", str(script)],
            env=session_env(work),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd="/",
        )
        assert session.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(session.stdout), daemon=True)
        reader.start()
        try:
            code = session.wait(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = -1
            lines.append(f"### FAILED: the session did not end within {SESSION_TIMEOUT} s\n")
        reader.join(timeout=2)
    reader.join(timeout=10)  # the namespace is gone: every writer of the pipe with it
    output = "".join(lines)
    (work / "session.log").write_text(output)
    return code, output


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path: Path) -> None:
    for tool in ("git", "curl"):
        if shutil.which(tool) is None:
            missing(tool, "not on PATH")
    assert [b for b in BLOCKS if b.mode != "skip"], "the README has no ```sh block to run"
    work = tmp_path / "session"
    work.mkdir()
    # One README session per machine at a time: the nginx it sets up listens on port 80.
    with open(Path(tempfile.gettempdir()) / "serverflow-readme-session.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if port_80_taken():
            missing("port 80", "something here listens on it; on a fresh server, nginx does")
        started = time.monotonic()
        code, output = run_session(work)
    print(f"README session: {time.monotonic() - started:.0f} s\n{summary(output)}")
    failed = re.search(r"^### FAILED: (.*)$", output, re.M)
    assert code == 0 and "### END" in output and not failed, (
        f"the README does not work as written: {failed.group(1) if failed else 'see below'}\n"
        + "\n".join(output.splitlines()[-150:])
    )
    assert GREETING in output, "the sample app's answer is not in the session's output"
    left = written_into_checkout(work)
    assert not left, f"following the README writes into the checkout: {left}"
    shutil.rmtree(work / "overlay")  # what the README installed (the agent's venv...)


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.mode == "skip"],
    ids=lambda b: b.where,
)
def test_readme_block_not_run(block: Block) -> None:
    pytest.skip(f"{block.where} `{block.first_line}` is not run: {block.reason}")


def test_readme_markers_are_understood() -> None:
    """Cheap, without a sandbox: every marker parses and the first set-up commands are the
    brief's two, in order."""
    assert [b.first_line.split("#")[0].strip() for b in BLOCKS[:2]] == [
        "./scripts/run",
        "./scripts/test",
    ]
    assert BLOCKS[0].mode == "background" and BLOCKS[1].mode == "skip"
    with pytest.raises(AssertionError, match="directly followed"):
        parse("<!-- doctest: skip (x) -->\n\n```sh\ntrue\n```\n")
    with pytest.raises(AssertionError, match="unknown doctest marker"):
        parse("<!-- doctest: maybe -->\n```sh\ntrue\n```\n")
    assert [b.mode for b in parse("```text\nx\n```\n```sh\ntrue\n```\n")] == ["run"]


def test_files_left_in_the_checkout_are_named(tmp_path: Path) -> None:
    """What the sandbox's overlay of the checkout holds: .venv and ignored files are fine,
    anything else (a new file, a changed or deleted tracked one) is named."""
    base = tmp_path / "overlay" / "0"
    upper = base / "upper"
    for name in (".venv/lib/x.py", "core/serverflow/__pycache__/a.pyc", "hello/app.py"):
        (upper / name).parent.mkdir(parents=True, exist_ok=True)
        (upper / name).write_text("")
    if os.geteuid() != 0:
        pytest.skip("making an overlay whiteout (a 0/0 character device) needs root")
    os.mknod(upper / "README.md", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    (base / "target").write_text(str(ROOT))
    assert sorted(written_into_checkout(tmp_path)) == ["deleted README.md", "hello/app.py"]
