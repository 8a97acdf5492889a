"""Who is calling: browser sessions (quart-auth cookie) and API bearer tokens.

Every API handler is wrapped by `requires(role)`, which authenticates, checks the role and
CSRF, then runs the handler inside `scoped()` for the caller's organisation.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from quart import g, request
from quart_auth import AuthUser, current_user, login_user, logout_user

from serverflow import login_throttle
from serverflow.controlplane import current
from serverflow.csrf import HEADER as CSRF_HEADER
from serverflow.csrf import check_csrf
from serverflow.errors import (
    AuthenticationRequired,
    PermissionDenied,
    TooManyRequests,
)
from serverflow.http_errors import error_code
from serverflow.models import ApiToken, Membership, Role, User, UserSession
from serverflow.passwords import averify_password
from serverflow.tenancy import scoped
from serverflow.tokens import hash_token, new_session_token, token_org

log = logging.getLogger(__name__)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    kind: Literal["session", "token"]
    org_id: uuid.UUID
    role: Role
    user_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None
    label: str = ""
    # An instance operator: may manage what all organisations share (plugins...).
    operator: bool = False

    def can(self, needed: Role) -> bool:
        return self.role.allows(needed)


def operator_needed() -> PermissionDenied:
    return PermissionDenied(
        "Only an instance operator can do this: it changes the instance for every "
        "organisation (an instance operator adds you with `serverflow operators add`).",
        code="AUTH007",
    )


def bad_token() -> AuthenticationRequired:
    return AuthenticationRequired(
        "The API token is malformed, unknown, expired or revoked.", code="AUTH002"
    )


async def _from_token(raw: str) -> Principal:
    value = raw[7:].strip() if raw[:7].lower() == "bearer " else ""
    org_id = token_org(value)
    if org_id is None:
        raise bad_token()
    async with scoped(org_id):
        token = await ApiToken.get_or_none(token_hash=hash_token(value))
        now = datetime.now(UTC)
        if (
            token is None
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= now)
        ):
            raise bad_token()
        if token.last_used_at is None or now - token.last_used_at > TOKEN_TOUCH_INTERVAL:
            await ApiToken.filter(id=token.id).update(last_used_at=now)
    operator = token.operator
    if operator and token.created_by_id is not None:  # only while its creator still is one
        operator = await User.filter(id=token.created_by_id, is_operator=True).exists()
    return Principal(
        "token",
        org_id,
        token.role,
        user_id=token.created_by_id,
        token_id=token.id,
        label=f"token:{token.name}",
        operator=operator,
    )


async def token_principal(authorization: str) -> Principal:
    """The caller an `Authorization: Bearer ...` value names, checked as for the REST API."""
    return await _from_token(authorization)


async def session_user() -> tuple[UserSession, User] | None:
    """The signed-in browser session and its user, if any."""
    if "sf_session" in g:
        cached: tuple[UserSession, User] | None = g.sf_session
        return cached
    found = None
    auth_id = current_user.auth_id
    if auth_id:
        sess = await UserSession.get_or_none(token_hash=hash_token(auth_id)).prefetch_related(
            "user"
        )
        if sess is not None and sess.expires_at > datetime.now(UTC) and sess.user.is_active:
            found = (sess, sess.user)
    g.sf_session = found
    return found


async def session_membership(sess: UserSession, user: User) -> Membership:
    """The membership a session works in: its chosen organisation, else the user's first."""
    async with scoped(user_id=user.id):
        memberships = await Membership.all().order_by("created_at")
    if not memberships:
        raise PermissionDenied("Your account is not a member of any organisation.")
    return next(
        (m for m in memberships if m.organization_id == sess.current_org_id), memberships[0]
    )


async def _from_session() -> Principal:
    found = await session_user()
    if found is None:
        raise AuthenticationRequired()
    sess, user = found
    chosen = await session_membership(sess, user)
    return Principal(
        "session",
        chosen.organization_id,
        chosen.role,
        user_id=user.id,
        label=user.email,
        operator=user.is_operator,
    )


async def authenticate() -> Principal:
    if "principal" in g:
        principal: Principal = g.principal
        return principal
    header = request.headers.get("Authorization")
    principal = await (_from_token(header) if header is not None else _from_session())
    g.principal = principal
    key = f"token:{principal.token_id}" if principal.token_id else f"user:{principal.user_id}"
    await current().api_limit.check(key)
    if principal.kind == "session" and request.method in UNSAFE_METHODS:
        check_csrf(request.headers.get(CSRF_HEADER))
    return principal


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def requires(role: Role, atomic: bool = True, operator: bool = False) -> Callable[[F], F]:
    """Authenticate, require at least `role`, and run the handler in the caller's tenant scope.

    With `atomic=False` the handler runs outside any transaction and opens short
    `scoped()` blocks itself: for handlers that wait on an agent, so no database lock is
    held while they wait. With `operator=True` the caller must be an instance operator,
    and the change (or its refusal) is audited in the instance chain.
    """

    def decorator(func: F) -> F:
        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = await authenticate()
            if request.method not in UNSAFE_METHODS:
                _check_role(principal, role, operator)
                return await _call(func, principal, atomic, args, kwargs)
            outcome = "INT001"
            try:
                _check_role(principal, role, operator)
                result = await _call(func, principal, atomic, args, kwargs)
                outcome = "ok"
                return result
            except Exception as exc:
                outcome = error_code(exc)
                raise
            finally:
                # After the handler's transaction: a refused change is audited too.
                await audit_request(principal, outcome, instance=operator)

        return wrapper  # type: ignore[return-value]

    return decorator


def _check_role(principal: Principal, role: Role, operator: bool = False) -> None:
    if operator and not principal.operator:
        raise operator_needed()
    if not principal.can(role):
        raise PermissionDenied(
            f"This needs the {role} role; you are {principal.role}.", code="AUTH004"
        )


async def _call(
    func: Callable[..., Awaitable[Any]],
    principal: Principal,
    atomic: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    if not atomic:
        return await func(*args, **kwargs)
    async with scoped(principal.org_id, principal.user_id):
        return await func(*args, **kwargs)


def actor(principal: Principal) -> str:
    return principal.label if principal.kind == "token" else f"user:{principal.label}"


async def audit_request(principal: Principal, outcome: str, instance: bool = False) -> None:
    """Every API call that changes something, who made it, and how it ended; in the
    instance chain (`instance=True`) for what changes the instance."""
    from serverflow import audit

    body = await request.get_json(silent=True) if request.is_json else None
    details: dict[str, Any] = {"body": body} if body is not None else {}
    if request.view_args:
        details["path_args"] = dict(request.view_args)
    details["source"] = client_ip()
    if instance:
        details["organization_id"] = str(principal.org_id)
    await audit.append(
        audit.INSTANCE if instance else principal.org_id,
        audit.Record(
            actor=actor(principal),
            action=str(request.endpoint or "api"),
            target=f"{request.method} {request.path}",
            details=details,
            outcome=outcome,
        ),
    )


def principal() -> Principal:
    """The authenticated caller of the current request (inside `requires`)."""
    p: Principal = g.principal
    return p


# -- sign-in -------------------------------------------------------------------------


def client_ip() -> str:
    """The caller's address: the connection's, unless it comes from a trusted proxy
    (setting TRUSTED_PROXIES), whose X-Forwarded-For then names the client."""
    remote = request.remote_addr or "unknown"
    trusted = current().settings.trusted_proxies
    if trusted:
        remote = forwarded_client(remote, request.headers.getlist("X-Forwarded-For"), trusted)
    return remote[:64]


def forwarded_client(remote: str, forwarded_for: list[str], trusted: tuple[str, ...]) -> str:
    """The first address, from the right, that is not a trusted proxy: each proxy appends
    the address it saw, so only the entries our own proxies added can be believed."""
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    client = remote
    while is_trusted(client) and hops:
        client = hops.pop()
    return client


async def check_password(email: str, password_hash: str | None, password: str) -> bool:
    """Whether `password` is right for `email`, throttled per account and caller address.

    Raises AUTH005 (429 with Retry-After) without checking the password while the caller's
    address must wait; see serverflow.login_throttle.
    """
    cp = current()
    email, ip, now = email[:254], client_ip(), cp.clock()
    try:
        await login_throttle.check(email, ip, cp.settings, now)
    except TooManyRequests as exc:
        log.warning("sign-in throttled for %s from %s", email, ip, extra={"code": "AUTH005"})
        await _sign_in_refused(email, ip, "auth.sign_in_throttled", exc.code)
        raise
    await login_throttle.record(email, ip, now)
    if await averify_password(password_hash, password):
        await login_throttle.clear(email, ip)
        return True
    log.warning("failed sign-in for %s from %s", email, ip, extra={"code": "AUTH003"})
    await _sign_in_refused(email, ip, "auth.sign_in_failed", "AUTH003")
    await login_throttle.forget_old(cp.settings, now)
    return False


async def _sign_in_refused(email: str, ip: str, action: str, code: str) -> None:
    # Accounts belong to the instance (a person may be in several organisations, or the
    # address may be nobody's): sign-in refusals go to the instance chain.
    from serverflow import audit

    await current().refusals.note(
        audit.INSTANCE, action, code, actor=f"user:{email}", source=ip, target=f"user:{email}"
    )


async def sign_in(email: str, password: str) -> User:
    """Check the password (throttled) and open a browser session."""
    email = email.strip().lower()
    user = await User.get_or_none(email=email)
    usable = user is not None and user.is_active
    ok = await check_password(email, user.password_hash if usable and user else None, password)
    if not ok or user is None:
        raise AuthenticationRequired("Wrong email or password.", code="AUTH003")
    await User.filter(id=user.id).update(last_login_at=datetime.now(UTC))
    value, digest = new_session_token()
    hours = current().settings.session_hours
    async with scoped(user_id=user.id):
        first = await Membership.all().order_by("created_at").first()
    await UserSession.create(
        user=user,
        token_hash=digest,
        current_org_id=first.organization_id if first else None,
        expires_at=datetime.now(UTC) + timedelta(hours=hours),
    )
    login_user(AuthUser(value))
    log.info("signed in: %s", email)
    return user


async def sign_out() -> None:
    auth_id = current_user.auth_id
    if auth_id:
        await UserSession.filter(token_hash=hash_token(auth_id)).delete()
    logout_user()
