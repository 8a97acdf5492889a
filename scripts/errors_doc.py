"""Write docs/errors.md from serverflow.errors.CODES: `python scripts/errors_doc.py`."""

from __future__ import annotations

import sys
from pathlib import Path

from serverflow.errors import CODES

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

HEAD = """# Error codes

Every error the API returns is JSON with a stable code and a message a person can act on:

```json
{"error": {"code": "SRV001", "message": "server 4f0c... not found"}}
```

Validation errors (`VAL001`, `ACT003`) add `details`: a list of `{field, problem, type}`;
the submitted values are never echoed back (they may be secrets). Codes are never reused
or renumbered. The CLI prints the same codes (`Error: [ORG001] no organisation 'x'`).
The agent protocol has its own codes (FRM, AUT, SIG, CMD...), listed in
[protocol.md](protocol.md).

Every 429 (`AUTH005`, `RATE001`) carries a `Retry-After` header: whole seconds, at least 1.
`AUTH005` throttles sign-in per account and source address, so it never keeps anyone out
who signs in from another address. A code marked "command" is not an HTTP answer: it is
the `code` of a command that ended without a result from its agent.

| code | HTTP | meaning |
|---|---|---|
"""

TAIL = """
An `INT001` answer carries a reference (`ref 3fa2c1...`) that is also in the control
plane's log next to the full traceback; the traceback itself is never sent to clients.
"""


def render() -> str:
    rows = "".join(
        f"| `{code}` | {status} | {meaning} |\n" for code, (status, meaning) in CODES.items()
    )
    return HEAD + rows + TAIL


if __name__ == "__main__":
    DOC.write_text(render())
    sys.exit(0)
