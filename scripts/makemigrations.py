"""Generate aerich migrations for both dialects after a model change.

    .venv/bin/python scripts/makemigrations.py NAME
    .venv/bin/python scripts/makemigrations.py --check   # exit 1 if a migration is missing

aerich writes dialect-specific SQL, so there is one history per dialect under
core/serverflow/migrations/{sqlite,postgres}/. Generation is offline (no database needed).
For PostgreSQL, every table created with an `organization_id` column also gets its
row-level-security policy appended to the same migration, as literal SQL.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aerich import Command
from tortoise import Tortoise

from serverflow.db import MIGRATIONS_DIR, migrations_location, tortoise_config

URLS = {
    "sqlite": "sqlite://:memory:",
    "postgres": "postgres://serverflow@127.0.0.1:5432/serverflow",
}

RLS_TEMPLATE = """
        ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY;
        ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY;
        CREATE POLICY "{table}_tenant" ON "{table}"
            USING ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid{extra})
            WITH CHECK ("organization_id" = NULLIF(current_setting('app.org_id', true), '')::uuid);"""

# Tables readable through a second key besides the organisation.
EXTRA_KEYS = {
    "memberships": """
                OR "user_id" = NULLIF(current_setting('app.user_id', true), '')::uuid""",
}


def rls_sql(upgrade_sql: str) -> str:
    statements = []
    for match in re.finditer(r'CREATE TABLE IF NOT EXISTS "(\w+)" \((.*?)\n\);', upgrade_sql, re.S):
        table, body = match.group(1), match.group(2)
        if '"organization_id" UUID NOT NULL REFERENCES "organizations"' in body:
            statements.append(RLS_TEMPLATE.format(table=table, extra=EXTRA_KEYS.get(table, "")))
    return "".join(statements)


def add_rls(path: Path) -> None:
    text = path.read_text()
    head, sep, rest = text.partition(
        'async def upgrade(db: BaseDBAsyncClient) -> str:\n    return """'
    )
    body, close, tail = rest.partition('"""')
    extra = rls_sql(body)
    if extra:
        path.write_text(head + sep + body + extra + close + tail)


async def generate(dialect: str, name: str, root: Path | None = None) -> Path | None:
    url = URLS[dialect]
    location = root / dialect if root else migrations_location(url)
    before = set(location.rglob("*.py"))
    command = Command(tortoise_config=tortoise_config(url), app="models", location=str(location))
    try:
        if not any(location.glob("models/*_*.py")):
            await command.init_migrations(safe=True)
        else:
            await command.init(offline=True)
            await command.migrate(name, offline=True, no_input=True)
    finally:
        await Tortoise.close_connections()
    created = sorted(set(location.rglob("*.py")) - before)
    new = [p for p in created if p.name != "__init__.py"]
    if not new:
        return None
    # aerich escapes "/" in SQL comments as "\/", an invalid escape in a Python string.
    new[0].write_text(new[0].read_text().replace("\\/", "/"))
    if dialect == "postgres":
        add_rls(new[0])
    return new[0]


def check() -> int:
    """Exit 1 if the models have changes that no committed migration holds."""
    pending = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "migrations"
        shutil.copytree(MIGRATIONS_DIR, root)
        for dialect in URLS:
            proc = subprocess.run(
                [sys.executable, __file__, "--dialect", dialect, "pending", str(root)],
                capture_output=True,
                text=True,
                check=True,
            )
            if "no changes" not in proc.stdout:
                pending.append(f"{dialect}: {proc.stdout.strip()}")
    if pending:
        print("models changed without a migration; run scripts/makemigrations.py NAME")
        print("\n".join(pending))
        return 1
    print("migrations match the models")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args == ["--check"]:
        return check()
    if len(args) in (3, 4) and args[0] == "--dialect":
        root = Path(args[3]) if len(args) == 4 else None
        path = asyncio.run(generate(args[1], args[2], root))
        print(f"{args[1]}: {path if path else 'no changes'}")
        return 0
    name = args[0] if args else "update"
    # aerich keeps its pending operations in class attributes: one process per dialect.
    for dialect in URLS:
        subprocess.run([sys.executable, __file__, "--dialect", dialect, name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
