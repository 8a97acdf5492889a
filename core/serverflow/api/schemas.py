"""Pydantic building blocks shared by the API modules."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel

from serverflow.errors import NotFound
from serverflow.schemas import Input as Input
from serverflow.schemas import Output as Output

RoleName = Literal["viewer", "member", "admin", "owner"]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorBody


def parse_id(value: str, code: str, what: str) -> uuid.UUID:
    """Path ids that are not UUIDs are simply not found (same answer as another org's id)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value!r} not found", code=code) from None
