"""Organisations, users, memberships and API tokens: the operations the API and CLI share."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import email_validator
from tortoise.exceptions import IntegrityError

from serverflow.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from serverflow.models import ApiToken, Membership, Organization, Role, User
from serverflow.passwords import ahash_password, check_strength
from serverflow.tenancy import scoped
from serverflow.tokens import new_token

# ServerFlow is self-hosted and sends no mail (an address is a sign-in name), so the
# special-use names email-validator refuses by default name real mailboxes here: .local
# (the first admin is admin@serverflow.local), .test, localhost, home.arpa (RFC 8375),
# .onion and .invalid (an account without a mailbox). Its documented way to allow them.
ACCEPTED_SPECIAL_USE = ("local", "localhost", "test", "arpa", "onion", "invalid")
for _name in ACCEPTED_SPECIAL_USE:
    if _name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_name)


def normalize_email(email: str) -> str:
    """An address as RFC 5321/6531 allow it (intranet and internationalised ones too),
    lower-cased as users have always been stored and looked up at sign-in; else VAL001."""
    email = email.strip().lower()
    try:
        email_validator.validate_email(
            email,
            check_deliverability=False,  # no DNS: intranet domains, offline installs
            globally_deliverable=False,  # dotless hosts (root@nas) and special-use names
            allow_domain_literal=True,  # user@[192.0.2.1]
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidInput(
            f"{email[:100]!r} is not an email address: {exc}", code="VAL001"
        ) from None
    return email


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]
    return slug or "org"


async def create_organization(name: str) -> Organization:
    base = slugify(name)
    slug, n = base, 1
    while await Organization.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return await Organization.create(name=name, slug=slug)


async def create_user(email: str, password: str, name: str = "") -> User:
    email = normalize_email(email)
    if problem := check_strength(password):
        raise InvalidInput(problem, code="VAL001")
    if await User.filter(email=email).exists():
        raise Conflict(f"a user with email {email} already exists", code="USR001")
    try:
        return await User.create(
            email=email, name=name, password_hash=await ahash_password(password)
        )
    except IntegrityError as exc:
        raise Conflict(f"a user with email {email} already exists", code="USR001") from exc


async def set_password(user: User, password: str) -> None:
    """Change a password and end every browser session of the user."""
    from serverflow.models import UserSession

    if problem := check_strength(password):
        raise InvalidInput(problem, code="VAL001")
    user.password_hash = await ahash_password(password)
    await user.save(update_fields=["password_hash"])
    await UserSession.filter(user_id=user.id).delete()


async def add_member(org: Organization, user: User, role: Role) -> Membership:
    async with scoped(org.id):
        if await Membership.filter(user_id=user.id).exists():
            raise Conflict(f"{user.email} is already a member", code="MEM004")
        return await Membership.create(organization_id=org.id, user_id=user.id, role=role)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    value: str  # shown once, never stored


async def issue_token(
    org_id: uuid.UUID,
    name: str,
    role: Role,
    created_by: User | None = None,
    creator_role: Role | None = None,
    expires_in_days: int | None = None,
    allow_apply: bool = False,
    operator: bool = False,
) -> IssuedToken:
    """Create a token; the caller must be inside `scoped(org_id)` or this opens one."""
    if creator_role is not None and not creator_role.allows(role):
        raise PermissionDenied(
            f"a {creator_role} cannot create a token with role {role}", code="TOK002"
        )
    fresh = new_token(org_id)
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    async with scoped(org_id):
        token = await ApiToken.create(
            organization_id=org_id,
            name=name,
            role=role,
            token_hash=fresh.token_hash,
            prefix=fresh.prefix,
            created_by_id=created_by.id if created_by else None,
            expires_at=expires,
            allow_apply=allow_apply,
            operator=operator,
        )
    return IssuedToken(token=token, value=fresh.value)


async def get_org(slug_or_id: str) -> Organization:
    try:
        org = await Organization.get_or_none(id=uuid.UUID(slug_or_id))
    except ValueError:
        org = await Organization.get_or_none(slug=slug_or_id)
    if org is None:
        raise NotFound(f"no organisation {slug_or_id!r}", code="ORG001")
    return org
