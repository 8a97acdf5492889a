"""The Procfile, as Heroku and Dokku define it (docs/deploys.md, "Procfile").

    web: gunicorn shop.wsgi --bind 0.0.0.0:$PORT
    worker: python -m shop.worker
    release: python manage.py migrate --no-input

Each line is `<process type>: <command>`; blank lines and `#` comments are skipped. `web`
is the start command, `release` runs once per deploy before the switch, every other type
runs as extra processes of the release. Commands never go through a shell: they are split
as a shell would split them, `$NAME` / `${NAME}` are filled in from the process's
environment and leading `NAME=value` words set variables, but pipes, redirects, `&&` and
command substitution are refused with a message saying to put them in a script.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serverflow_agent.deploy.desired import DeployError
from serverflow_contract import naming

NAME = "Procfile"
MAX_BYTES = 64 * 1024
_LINE = re.compile(r"^([A-Za-z0-9_-]+)[ \t]*:[ \t]*(.*?)\s*$")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
# Shell syntax a plain argv cannot mean (outside quotes): operators and substitutions.
_SHELL_OPERATORS = ("&&", "||", "|", ";", ">", "<", "`", "$(", "&")

Argv = tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """One Procfile line: its argv (variables not filled in yet) and the line as written."""

    argv: Argv
    line: str
    env: tuple[tuple[str, str], ...] = ()

    def resolve(self, env: Mapping[str, str]) -> tuple[Argv, dict[str, str]]:
        """The argv with variables from `env` (and its own assignments) filled in, and
        the assignments; like a shell, a word that was only an unset variable is dropped."""
        own = dict(env)
        assigned: dict[str, str] = {}
        for key, value in self.env:
            assigned[key] = own[key] = expand(value, own)
        argv = []
        for word in self.argv:
            value = expand(word, own)
            if value or not VARIABLE.fullmatch(word):
                argv.append(value)
        if not argv:
            raise DeployError(f"the Procfile command {self.line!r} is empty once expanded")
        return tuple(argv), assigned


def expand(word: str, env: Mapping[str, str]) -> str:
    return VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), word)


def parse_command(line: str, what: str) -> Command:
    """A command line as a Command, or DeployError saying why it needs a shell."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;<>")
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as exc:
        raise DeployError(f"{what} cannot be split ({exc}): {line!r}") from exc
    # shlex keeps quoted text as words; an operator outside quotes is a word of its own.
    bare = shlex.split(line)
    for word in words:
        if word in _SHELL_OPERATORS or (word not in bare and any(op in word for op in "&|;<>")):
            raise DeployError(
                f"{what} uses shell syntax ({word!r}): ServerFlow runs commands without a "
                f"shell; put the commands in a script (say bin/start) and call it: {line!r}"
            )
    for word in bare:
        if "`" in word or "$(" in word:
            raise DeployError(
                f"{what} uses command substitution: ServerFlow runs commands without a "
                f"shell; put the commands in a script and call it: {line!r}"
            )
    env = []
    while bare and ASSIGNMENT.fullmatch(bare[0]):
        key, _, value = bare.pop(0).partition("=")
        env.append((key, value))
    if not bare:
        raise DeployError(f"{what} has no command: {line!r}")
    return Command(tuple(bare), line, tuple(env))


def read(release: Path) -> dict[str, Command]:
    """The Procfile's commands by process type, in file order; {} when there is none."""
    path = release / NAME
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise DeployError(f"the Procfile is larger than {MAX_BYTES // 1024} KiB")
    commands: dict[str, Command] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        match = _LINE.match(text)
        if match is None:
            raise DeployError(
                f"Procfile line {number} is not `<process type>: <command>`: {text[:200]!r}"
            )
        kind, command = match.group(1), match.group(2)
        try:
            naming.check_process_type(kind)
        except naming.InvalidName as exc:
            raise DeployError(f"Procfile line {number}: {exc}") from None
        if kind in commands:
            raise DeployError(f"Procfile line {number}: the process type {kind!r} appears twice")
        if not command:
            raise DeployError(f"Procfile line {number}: {kind}: has no command")
        commands[kind] = parse_command(command, f"the Procfile's {kind}: line")
    return commands
