"""E-mail addresses as the RFCs allow them (intranet, plus-addressing, internationalised),
through one rule: accounts.normalize_email, used by the CLI, the API and sign-in."""

from __future__ import annotations

import pytest

from serverflow.accounts import add_member, create_user, normalize_email
from serverflow.errors import InvalidInput
from serverflow.models import Role, User
from tests.conftest import PASSWORD, ControlPlaneUnderTest, sign_in

# 254 characters, the most an address may have (RFC 5321's path limit, less the <>).
LONGEST = "x" * 64 + "@" + ".".join(["d" * 63, "e" * 63, "f" * 56]) + ".test"
assert len(LONGEST) == 254

ACCEPTED = {
    "admin@serverflow.local": "admin@serverflow.local",  # the first admin `up` creates
    "ops@acme.test": "ops@acme.test",
    "Ops@Build.Internal": "ops@build.internal",
    "me@nas.lan": "me@nas.lan",
    "root@localhost": "root@localhost",
    "root@nas": "root@nas",  # a dotless intranet host
    "me@router.home.arpa": "me@router.home.arpa",  # RFC 8375
    "service@nowhere.invalid": "service@nowhere.invalid",  # an account with no mailbox
    "first.last+deploys@example.com": "first.last+deploys@example.com",
    "o'brien_x-y@example.com": "o'brien_x-y@example.com",
    "a@[192.0.2.1]": "a@[192.0.2.1]",  # a domain literal (RFC 5321)
    "  Padded@Example.com  ": "padded@example.com",
    "José@Bücher.example": "josé@bücher.example",
    "用户@例子.广告": "用户@例子.广告",
    "user@xn--bcher-kva.example": "user@xn--bcher-kva.example",  # as typed: sign-in agrees
    LONGEST: None,
    "x" * 70 + "@example.com": None,  # RFC 5321 lets longer local parts through
}

REFUSED = {
    "no-at-sign": "must have an @-sign",
    "two@@example.com": "invalid characters",
    "a@b@example.com": "invalid characters",
    "with space@example.com": "invalid characters",
    "tab\t@example.com": "invalid characters",
    "@example.com": "something before the @-sign",
    "user@": "something after the @-sign",
    ".dot@example.com": "cannot start with a period",
    "dot.@example.com": "period immediately before the @-sign",
    "a..b@example.com": "two periods in a row",
    "user@-example.com": "hyphen immediately after the @-sign",
    "user@exa_mple.com": "invalid characters",
    LONGEST + "x": "too long",
    '"quoted local"@example.com': "Quoting the part before the @-sign",  # obsolete
    "": "must have an @-sign",
}


@pytest.mark.parametrize(("given", "stored"), ACCEPTED.items())
def test_addresses_the_rfcs_allow_are_accepted(given: str, stored: str | None) -> None:
    assert normalize_email(given) == (stored or given.lower())
    assert normalize_email(normalize_email(given)) == normalize_email(given)  # stable


@pytest.mark.parametrize(("given", "reason"), REFUSED.items())
def test_garbage_is_refused_with_the_reason(given: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        normalize_email(given)
    assert refused.value.code == "VAL001" and refused.value.status == 400
    assert reason in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    "email", ["Admin@Serverflow.Local", "Dev+CI@Acme.Internal", "José@Bücher.Example"]
)
async def test_such_users_are_created_and_sign_in(
    control_plane: ControlPlaneUnderTest, email: str
) -> None:
    """Created as typed (the CLI's create_user), stored lower-cased; the login form finds
    them however the address is cased."""
    tenant = await control_plane.tenant("Acme")
    user = await create_user(email, PASSWORD)
    await add_member(tenant.org, user, Role.MEMBER)
    assert user.email == email.lower()
    await sign_in(control_plane.client(), email.upper() if email.isascii() else email)
    await sign_in(control_plane.client(), f"  {email.lower()} ")


async def test_the_api_checks_addresses_with_the_same_rule(
    control_plane: ControlPlaneUnderTest,
) -> None:
    tenant = await control_plane.tenant("Acme")
    client = control_plane.client()
    user = await create_user("new+member@acme.internal", PASSWORD)

    refused = await client.post(
        "/api/v1/members", json={"email": "not an address", "role": "member"},
        headers=tenant.auth(),
    )  # fmt: skip
    body = await refused.get_json()
    assert (refused.status_code, body["error"]["code"]) == (400, "VAL001")
    assert "is not an email address" in body["error"]["message"]

    unknown = await client.post(
        "/api/v1/members", json={"email": "nobody@acme.internal", "role": "member"},
        headers=tenant.auth(),
    )  # fmt: skip
    assert (unknown.status_code, (await unknown.get_json())["error"]["code"]) == (404, "MEM003")

    added = await client.post(
        "/api/v1/members", json={"email": "New+Member@ACME.internal", "role": "member"},
        headers=tenant.auth(),
    )  # fmt: skip
    assert added.status_code == 201, await added.get_data(as_text=True)
    assert (await added.get_json())["email"] == user.email
    assert await User.filter(email="new+member@acme.internal").count() == 1
