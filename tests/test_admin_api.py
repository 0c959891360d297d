"""The admin panel over real HTTP: what its API refuses, hides and records.

A real admin server (the host app under uvicorn, connected as the operator
role) runs against the test database; the tests talk to it with httpx as
the browser would (session cookie and CSRF header) and check the database
directly.
"""

from __future__ import annotations

import datetime
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pyotp
import pytest
import pytest_asyncio
from admin_support import (
    ENVELOPE,
    AdminServer,
    OperatorAccount,
    create_operator,
    login,
    start_admin_server,
    stop_admin_server,
)

from orchestrator_db import CredentialNotFound, user_scope
from orchestrator_db.admin.audit import SECRET_REPLACED, diff
from orchestrator_db.admin.auth import KeyRingMFAEncryption
from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry, is_envelope
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import DecryptionError

if TYPE_CHECKING:
    from helpers import TestDatabase

CREDENTIALS_API = "/api/tables/user_credentials_admin/"


@pytest.fixture(scope="module")
def server(test_db: TestDatabase) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "api")
    yield server
    stop_admin_server(server)


@pytest_asyncio.fixture(scope="module")
async def superuser(owner: asyncpg.Pool) -> OperatorAccount:
    return await create_operator(owner, superuser=True)


@pytest_asyncio.fixture(scope="module")
async def operator(owner: asyncpg.Pool) -> OperatorAccount:
    return await create_operator(owner, superuser=False)


@pytest.fixture(scope="module")
def as_superuser(server, superuser) -> httpx.Client:
    """One login for the module: the login endpoint is rate limited per address."""
    return login(server, superuser)


@pytest.fixture(scope="module")
def as_operator(server, operator) -> httpx.Client:
    return login(server, operator)


@pytest_asyncio.fixture
async def fresh_operator(owner: asyncpg.Pool) -> OperatorAccount:
    """An operator of its own, for tests that change or enroll it."""
    return await create_operator(owner, superuser=False)


@pytest_asyncio.fixture
async def credential(user_with_account: str) -> dict:
    """A stored credential, made through the public API, with its plaintexts."""
    api_key, secret_key = f"AK-{secrets.token_hex(8)}", f"SK-{secrets.token_hex(12)}"
    async with user_scope(user_with_account) as scope:
        stored = await scope.put_credential("alpaca", api_key=api_key, secret_key=secret_key)
    return {"id": str(stored.id), "user_id": user_with_account, "api_key": api_key, "secret_key": secret_key}


async def stored_row(owner: asyncpg.Pool, credential_id: str) -> asyncpg.Record:
    return await owner.fetchrow(
        "SELECT * FROM user_credentials WHERE id = $1", uuid.UUID(credential_id)
    )


async def audit_entries(owner: asyncpg.Pool, row_id: str) -> list[dict]:
    rows = await owner.fetch(
        "SELECT * FROM admin_audit_log WHERE row_id = $1 ORDER BY id", row_id
    )
    return [{**dict(row), "changes": json.loads(row["changes"])} for row in rows]


# The credentials API ########################################################


@pytest.mark.asyncio
async def test_secret_columns_absent_from_api_json(as_superuser, credential) -> None:
    """Make sure no list, detail, schema or new-row answer carries a secret column, its plaintext or an envelope."""
    client = as_superuser
    answers = [
        client.get(CREDENTIALS_API, params={"__readable": "true"}),
        client.get(f"{CREDENTIALS_API}{credential['id']}/", params={"__readable": "true"}),
        client.get(f"{CREDENTIALS_API}schema/"),
        client.get(f"{CREDENTIALS_API}new/"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200]
    detail = answers[1].json()
    assert detail["credential_type"] == "alpaca"
    assert detail["key_id"] == get_key_ring().active_key_id
    for answer in answers:
        assert "api_key" not in answer.text and "secret_key" not in answer.text
        assert credential["api_key"] not in answer.text
        assert credential["secret_key"] not in answer.text
        assert not ENVELOPE.search(answer.text)


@pytest.mark.asyncio
async def test_put_is_refused(as_superuser, credential, owner) -> None:
    """Make sure PUT on a credential is refused and leaves the stored row untouched."""
    before = await stored_row(owner, credential["id"])
    client = as_superuser

    response = client.put(
        f"{CREDENTIALS_API}{credential['id']}/",
        json={"is_active": False, "credential_type": "alpaca"},
    )

    assert response.status_code == 405
    assert await stored_row(owner, credential["id"]) == before


@pytest.mark.asyncio
async def test_patch_writes_audit_row(as_operator, operator, credential, owner) -> None:
    """Make sure a PATCH through the admin changes the row and records who changed which field, old and new."""
    client = as_operator

    response = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"is_active": False})

    assert response.status_code == 200, response.text
    assert (await stored_row(owner, credential["id"]))["is_active"] is False
    [entry] = await audit_entries(owner, credential["id"])
    assert (entry["actor_id"], entry["actor_username"]) == (operator.id, operator.username)
    assert (entry["action"], entry["table_name"]) == ("update", "user_credentials")
    assert entry["changes"]["is_active"] == {"old": True, "new": False}
    assert datetime.datetime.now(datetime.timezone.utc) - entry["occurred_at"] < datetime.timedelta(minutes=1)


@pytest.mark.asyncio
async def test_edit_form_save_keeps_secrets_and_writes_nothing(as_operator, credential, owner) -> None:
    """Make sure saving the edit form unchanged (every field sent back, timestamps rounded) changes nothing and logs nothing."""
    client = as_operator
    row = client.get(f"{CREDENTIALS_API}{credential['id']}/").json()
    body = {key: value for key, value in row.items() if key != "id"}
    body["is_active"] = "true"  # as the form's select sends it
    for field in ("created_at", "updated_at"):
        body[field] = body[field][:19] + ".000Z"
    before = await stored_row(owner, credential["id"])

    response = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json=body)

    assert response.status_code == 200, response.text
    assert await stored_row(owner, credential["id"]) == before
    assert await audit_entries(owner, credential["id"]) == []
    async with user_scope(credential["user_id"]) as scope:
        kept = await scope.get_credential("alpaca")
    assert kept.api_key.get_secret_value() == credential["api_key"]
    assert kept.secret_key.get_secret_value() == credential["secret_key"]


@pytest.mark.asyncio
async def test_patch_cannot_change_other_fields(as_superuser, superuser, credential, owner) -> None:
    """Make sure a PATCH that changes anything but active and expires_at is refused, even for a superuser."""
    client = as_superuser
    before = await stored_row(owner, credential["id"])

    renamed = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"credential_type": "polygon"})
    secret = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"api_key": ""})

    # 405 with a "detail" string: piccolo-admin shows it as text, not raw JSON.
    assert renamed.status_code == 405
    assert "credential_type cannot be changed" in renamed.json()["detail"]
    assert secret.status_code == 400
    assert await stored_row(owner, credential["id"]) == before


@pytest.mark.asyncio
async def test_expiry_change_makes_credential_unusable(as_operator, operator, credential, owner) -> None:
    """Make sure an operator can set expires_at, that it is audited, and that the API then refuses the credential as expired."""
    client = as_operator
    past = "2020-01-01T00:00:00Z"

    response = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"expires_at": past})

    assert response.status_code == 200, response.text
    with pytest.raises(CredentialNotFound) as refused:
        async with user_scope(credential["user_id"]) as scope:
            await scope.get_credential("alpaca")
    assert refused.value.reason == "expired"
    [entry] = await audit_entries(owner, credential["id"])
    assert entry["changes"]["expires_at"] == {"old": None, "new": "2020-01-01T00:00:00+00:00"}


@pytest.mark.asyncio
async def test_creating_credentials_through_the_table_is_refused(as_superuser, credential, owner) -> None:
    """Make sure POST on the credentials table is refused: credentials are created only by the secret form."""
    client = as_superuser
    row = client.get(f"{CREDENTIALS_API}{credential['id']}/").json()
    body = {**{k: v for k, v in row.items() if k != "id"}, "credential_type": "polygon"}
    count = await owner.fetchval("SELECT count(*) FROM user_credentials")

    response = client.post(CREDENTIALS_API, json=body)

    assert response.status_code == 405
    assert await owner.fetchval("SELECT count(*) FROM user_credentials") == count


@pytest.mark.asyncio
async def test_delete_is_superuser_only_and_audited(as_operator, as_superuser, operator, superuser, credential, owner) -> None:
    """Make sure an operator cannot delete a credential, a superuser can, and the deletion is audited."""
    url = f"{CREDENTIALS_API}{credential['id']}/"

    refused = as_operator.delete(url)
    assert refused.status_code == 405
    assert "only superusers can delete" in refused.json()["detail"]
    assert await stored_row(owner, credential["id"]) is not None

    deleted = as_superuser.delete(url)
    assert deleted.status_code == 204
    assert await stored_row(owner, credential["id"]) is None
    [entry] = await audit_entries(owner, credential["id"])
    assert (entry["action"], entry["actor_id"]) == ("delete", superuser.id)
    assert entry["changes"]["credential_type"] == {"old": "alpaca", "new": None}


# The secret form #############################################################

FORM = "/api/forms/set-credential-secrets/"


@pytest.mark.asyncio
async def test_secret_form_replaces_secrets_encrypted(as_superuser, credential, owner) -> None:
    """Make sure the form stores new secrets as envelopes the API decrypts, answers without them and audits only 'secret replaced'."""
    email = f"{credential['user_id']}@example.test"
    new_api, new_secret = f"AK-{secrets.token_hex(8)}", f"SK-{secrets.token_hex(12)}"

    response = as_superuser.post(
        FORM,
        json={"user": email, "credential_type": "alpaca", "api_key": new_api, "secret_key": new_secret},
    )

    assert response.status_code == 200, response.text
    assert new_api not in response.text and new_secret not in response.text
    row = await stored_row(owner, credential["id"])
    assert is_envelope(row["api_key"]) and is_envelope(row["secret_key"])
    async with user_scope(credential["user_id"]) as scope:
        stored = await scope.get_credential("alpaca")
    assert (stored.api_key.get_secret_value(), stored.secret_key.get_secret_value()) == (new_api, new_secret)
    [entry] = await audit_entries(owner, credential["id"])
    assert entry["action"] == "replace_secret"
    assert entry["changes"]["api_key"] == entry["changes"]["secret_key"] == SECRET_REPLACED
    logged = json.dumps(entry["changes"])
    assert new_api not in logged and new_secret not in logged and not ENVELOPE.search(logged)


@pytest.mark.asyncio
async def test_secret_form_creates_credential(as_superuser, user_with_account, owner) -> None:
    """Make sure the form creates a new credential the API can read, and audits its creation."""
    new_api, new_secret = f"AK-{secrets.token_hex(8)}", f"SK-{secrets.token_hex(12)}"

    response = as_superuser.post(
        FORM,
        json={"user": user_with_account, "credential_type": "polygon", "api_key": new_api, "secret_key": new_secret},
    )

    assert response.status_code == 200, response.text
    async with user_scope(user_with_account) as scope:
        stored = await scope.get_credential("polygon")
    assert stored.api_key.get_secret_value() == new_api
    [entry] = await audit_entries(owner, str(stored.id))
    assert entry["action"] == "create"


@pytest.mark.asyncio
async def test_secret_form_is_superuser_only(as_operator, operator, credential, owner) -> None:
    """Make sure an operator who is not a superuser cannot set secrets through the form."""
    before = await stored_row(owner, credential["id"])

    response = as_operator.post(
        FORM,
        json={"user": credential["user_id"], "credential_type": "alpaca", "api_key": "AK-x", "secret_key": "SK-x"},
    )

    assert response.status_code == 403
    assert await stored_row(owner, credential["id"]) == before


@pytest.mark.asyncio
async def test_secret_form_errors_never_echo_secrets(as_superuser, credential) -> None:
    """Make sure a form submission that fails validation answers without the secrets it was sent."""
    client = as_superuser
    api_key, secret_key = f"AK-{secrets.token_hex(8)}", f"SK-{secrets.token_hex(12)}"

    missing_user = client.post(FORM, json={"credential_type": "alpaca", "api_key": api_key, "secret_key": secret_key})
    bad_type = client.post(
        FORM, json={"user": credential["user_id"], "credential_type": "Not Valid", "api_key": api_key, "secret_key": secret_key}
    )

    assert (missing_user.status_code, bad_type.status_code) == (422, 422)
    for answer in (missing_user, bad_type):
        assert api_key not in answer.text and secret_key not in answer.text


# The other tables ############################################################


@pytest.mark.asyncio
async def test_user_table_is_read_only_and_filters_on_its_own_column_names(as_superuser, new_user, owner) -> None:
    """Make sure Better Auth's "user" can be listed and filtered, by e-mail and by its camelCase columns, but not written."""
    user_id = await new_user()
    await owner.execute('UPDATE "user" SET "emailVerified" = false WHERE id = $1', user_id)
    client = as_superuser

    by_email = client.get("/api/tables/user/", params={"email": f"{user_id}@example.test"})
    unverified = client.get("/api/tables/user/", params={"emailVerified": "false", "__page_size": 1000})
    write = client.patch(f"/api/tables/user/{user_id}/", json={"name": "Mallory"})

    assert [row["id"] for row in by_email.json()["rows"]] == [user_id]
    assert user_id in [row["id"] for row in unverified.json()["rows"]]
    assert all(row["emailVerified"] is False for row in unverified.json()["rows"])
    assert write.status_code == 405
    assert "Better Auth owns" in write.json()["detail"]


@pytest.mark.asyncio
async def test_account_writes_are_superuser_only(as_operator, as_superuser, operator, superuser, user_with_account, owner) -> None:
    """Make sure an operator cannot change a trading account but a superuser can, with an audit entry."""
    account_id = await owner.fetchval("SELECT id FROM user_accounts WHERE user_id = $1", user_with_account)
    url = f"/api/tables/user_accounts/{account_id}/"

    refused = as_operator.patch(url, json={"account_name": "Renamed"})
    changed = as_superuser.patch(url, json={"account_name": "Renamed"})

    assert (refused.status_code, changed.status_code) == (405, 200)
    assert refused.json() == {"detail": "Only superusers can change this table."}
    [entry] = await audit_entries(owner, str(account_id))
    assert entry["changes"]["account_name"] == {"old": "Paper Account", "new": "Renamed"}


@pytest.mark.asyncio
async def test_only_configured_tables_are_exposed(as_operator) -> None:
    """Make sure the admin lists exactly its five configured tables (auto_include_related is off)."""
    tables = as_operator.get("/api/tables/").json()

    assert sorted(tables) == [
        "admin_audit_log", "piccolo_user", "user", "user_accounts", "user_credentials_admin",
    ]
    assert as_operator.get("/api/tables/sessions/").status_code == 404


@pytest.mark.asyncio
async def test_audit_log_cannot_be_changed(as_superuser, test_db, owner) -> None:
    """Make sure the audit log refuses writes through the admin, UPDATE/DELETE by the operator role, and everything by the application role."""
    entry_id = await owner.fetchval(
        "INSERT INTO admin_audit_log (actor_username, action, table_name) VALUES ('t', 'update', 't') RETURNING id"
    )
    client = as_superuser
    assert client.delete(f"/api/tables/admin_audit_log/{entry_id}/").status_code == 405
    assert client.patch(f"/api/tables/admin_audit_log/{entry_id}/", json={"action": "delete"}).status_code == 405

    operator_role = await asyncpg.connect(test_db.operator_url)
    app_role = await asyncpg.connect(test_db.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await operator_role.execute("UPDATE admin_audit_log SET action = 'delete' WHERE id = $1", entry_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await operator_role.execute("DELETE FROM admin_audit_log WHERE id = $1", entry_id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_role.execute(
                "INSERT INTO admin_audit_log (actor_username, action, table_name) VALUES ('x', 'update', 'x')"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_role.fetch("SELECT * FROM admin_audit_log")
    finally:
        await operator_role.close()
        await app_role.close()
    # Even the owner cannot rewrite history: the trigger refuses.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await owner.execute("DELETE FROM admin_audit_log WHERE id = $1", entry_id)


# Who gets in #################################################################


@pytest.mark.asyncio
async def test_unauthenticated_requests_get_nothing(server) -> None:
    """Make sure the admin's API answers 401 without a session and the Swagger pages are gone."""
    anonymous = httpx.Client(base_url=server.admin_url)

    assert anonymous.get(CREDENTIALS_API).status_code == 401
    assert anonymous.get("/api/tables/").status_code == 401
    assert anonymous.get("/api/docs/").status_code == 404
    assert anonymous.get("/public/docs/").status_code == 404
    redirect = httpx.get(f"{server.base_url}/admin")
    assert (redirect.status_code, redirect.headers["location"]) == (307, "/admin/")


@pytest.mark.asyncio
@pytest.mark.parametrize("flags", [{"admin": False}, {"active": False}], ids=["non-admin", "inactive"])
async def test_non_admin_and_inactive_users_get_no_session(server, owner, flags) -> None:
    """Make sure a non-admin or inactive user with the right password is refused and gets no session row."""
    account = await create_operator(owner, **flags)
    client = httpx.Client(base_url=server.admin_url)
    client.get("/")
    token = client.cookies.get("csrftoken")

    response = client.post(
        "/public/login/",
        json={"username": account.username, "password": account.password},
        headers={"X-CSRFToken": token},
    )

    assert response.status_code == 401
    assert "id" not in client.cookies
    assert await owner.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", account.id) == 0


@pytest.mark.asyncio
async def test_deactivated_operator_session_stops_working(server, fresh_operator, owner) -> None:
    """Make sure an operator deactivated after logging in cannot use the session any more."""
    client = login(server, fresh_operator)
    assert client.get(CREDENTIALS_API).status_code == 200

    await owner.execute("UPDATE piccolo_user SET active = false WHERE id = $1", fresh_operator.id)

    assert client.get(CREDENTIALS_API).status_code == 401


@pytest.mark.asyncio
async def test_writes_need_the_csrf_header(server, as_operator, credential, owner) -> None:
    """Make sure a write without the CSRF header is refused before it reaches the table."""
    client = httpx.Client(base_url=server.admin_url, cookies=as_operator.cookies)

    response = client.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"is_active": False})

    assert response.status_code == 403
    assert (await stored_row(owner, credential["id"]))["is_active"] is True


@pytest.mark.asyncio
async def test_session_idle_and_max_expiry(server, fresh_operator, owner) -> None:
    """Make sure a request slides the idle deadline to 30 minutes, and an idle or too-old session is refused."""
    client = login(server, fresh_operator)
    session_id, max_expiry, created = await owner.fetchrow(
        "SELECT id, max_expiry_date, expiry_date - interval '30 minutes' FROM sessions "
        "WHERE user_id = $1", fresh_operator.id
    )
    assert max_expiry - created == datetime.timedelta(hours=8)

    await owner.execute(
        "UPDATE sessions SET expiry_date = localtimestamp + interval '5 minutes' WHERE id = $1", session_id
    )
    assert client.get(CREDENTIALS_API).status_code == 200
    slid = await owner.fetchval("SELECT expiry_date - localtimestamp FROM sessions WHERE id = $1", session_id)
    assert datetime.timedelta(minutes=29) < slid <= datetime.timedelta(minutes=30)

    await owner.execute(
        "UPDATE sessions SET expiry_date = localtimestamp - interval '1 second' WHERE id = $1", session_id
    )
    assert client.get(CREDENTIALS_API).status_code == 401

    await owner.execute(
        "UPDATE sessions SET expiry_date = localtimestamp + interval '10 minutes', "
        "max_expiry_date = localtimestamp - interval '1 second' WHERE id = $1",
        session_id,
    )
    assert client.get(CREDENTIALS_API).status_code == 401


@pytest.mark.asyncio
async def test_mfa_enrollment_encrypts_secret_and_guards_login(server, fresh_operator, owner) -> None:
    """Make sure MFA enrollment stores the TOTP secret under our key ring, is audited, and login then needs a valid code."""
    operator = fresh_operator
    client = login(server, operator)
    enrolled = client.post("/api/mfa-setup/", json={"action": "register", "password": operator.password, "format": "json"})
    assert enrolled.status_code == 200, enrolled.text

    stored = await owner.fetchval("SELECT secret FROM authenticator_secret WHERE user_id = $1", operator.id)
    assert stored.startswith(f"odbmfa-v2.{get_key_ring().active_key_id}.")
    totp_secret = KeyRingMFAEncryption(get_key_ring()).decrypt(stored)
    assert totp_secret not in stored
    [entry] = await owner.fetch(
        "SELECT * FROM admin_audit_log WHERE action = 'mfa' AND actor_id = $1", operator.id
    )
    assert totp_secret not in entry["changes"]

    fresh = httpx.Client(base_url=server.admin_url)
    fresh.get("/")
    headers = {"X-CSRFToken": fresh.cookies.get("csrftoken")}
    credentials = {"username": operator.username, "password": operator.password}
    assert fresh.post("/public/login/", json=credentials, headers=headers).status_code == 401
    assert "id" not in fresh.cookies
    good = fresh.post(
        "/public/login/", json={**credentials, "mfa_code": pyotp.TOTP(totp_secret).now()}, headers=headers
    )
    assert good.status_code == 200


@pytest.mark.asyncio
async def test_password_change_is_audited_without_the_password(server, fresh_operator, owner) -> None:
    """Make sure an operator's password change is recorded as 'secret replaced', with neither password in the log."""
    client = login(server, fresh_operator)
    new_password = f"new-{secrets.token_hex(8)}"

    response = client.post(
        "/api/change-password/",
        json={
            "current_password": fresh_operator.password,
            "new_password": new_password,
            "confirm_new_password": new_password,
        },
    )

    assert response.status_code in (200, 303), response.text
    [entry] = await owner.fetch(
        "SELECT * FROM admin_audit_log WHERE action = 'change_password' AND row_id = $1",
        str(fresh_operator.id),
    )
    assert json.loads(entry["changes"]) == {"password": SECRET_REPLACED}
    assert new_password not in entry["changes"] and fresh_operator.password not in entry["changes"]


# Without a server ############################################################


def test_mfa_encryption_survives_rotation_and_detects_tampering() -> None:
    """Make sure MFA secrets decrypt after the ring rotates to a new key, and a tampered value is refused."""
    old_entry, new_entry = generate_key_entry("old"), generate_key_entry("new")
    before = KeyRingMFAEncryption(KeyRing.parse(old_entry))
    sealed = before.encrypt("JBSWY3DPEHPK3PXP")

    after = KeyRingMFAEncryption(KeyRing.parse(f"{new_entry},{old_entry}"))

    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert after.decrypt(sealed) == "JBSWY3DPEHPK3PXP"
    assert after.encrypt("x").startswith("odbmfa-v2.new.")
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(DecryptionError):
        after.decrypt(tampered)


def test_audit_diff_never_records_secret_values() -> None:
    """Make sure a changed secret column is logged as 'secret replaced' and unchanged fields are left out."""
    before = {"password": "old-hash", "active": True, "email": "a@x"}
    after = {"password": "new-hash", "active": False, "email": "a@x"}

    changes = diff(before, after, frozenset({"password"}))

    assert changes == {"password": SECRET_REPLACED, "active": {"old": True, "new": False}}



# Refusals, resets and cascades ###############################################


@pytest.mark.asyncio
async def test_refusals_are_readable_and_nothing_is_dropped_silently(as_superuser, credential, owner) -> None:
    """Make sure a changed key id is refused (not dropped with a success), a credential POST points to the secrets form even with a malformed body, and audit-log writes are refused."""
    before = await stored_row(owner, credential["id"])

    key_id = as_superuser.patch(f"{CREDENTIALS_API}{credential['id']}/", json={"key_id": "other"})
    created = as_superuser.post(CREDENTIALS_API, json={"id": "", "credential_type": "x"})
    audit = as_superuser.post("/api/tables/admin_audit_log/", json={"action": "forged"})

    assert key_id.status_code == 405
    assert "key_id cannot be changed" in key_id.json()["detail"]
    assert created.status_code == 405
    assert "'Set credential secrets' form" in created.json()["detail"]
    assert audit.status_code == 405
    assert "append-only" in audit.json()["detail"]
    assert await stored_row(owner, credential["id"]) == before


@pytest.mark.asyncio
async def test_password_reset_by_superuser_ends_the_operators_sessions(server, as_superuser, fresh_operator, owner) -> None:
    """Make sure a superuser's reset of an operator's password ends that operator's open sessions, and is audited without the password."""
    victim = login(server, fresh_operator)
    assert victim.get(CREDENTIALS_API).status_code == 200
    new_password = secrets.token_urlsafe(16)

    reset = as_superuser.patch(f"/api/tables/piccolo_user/{fresh_operator.id}/", json={"password": new_password})

    assert reset.status_code == 200, reset.text
    assert victim.get(CREDENTIALS_API).status_code == 401
    assert await owner.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", fresh_operator.id) == 0
    [entry] = await audit_entries(owner, str(fresh_operator.id))
    assert entry["changes"]["password"] == SECRET_REPLACED
    assert new_password not in json.dumps(entry["changes"])


@pytest.mark.asyncio
async def test_account_delete_audits_its_cascaded_credentials(as_superuser, superuser, credential, owner) -> None:
    """Make sure deleting an account records each credential deleted with it, by type and id, and no secret."""
    account_id = await owner.fetchval(
        "SELECT user_account_id FROM user_credentials WHERE id = $1", uuid.UUID(credential["id"])
    )
    envelopes = await stored_row(owner, credential["id"])

    deleted = as_superuser.delete(f"/api/tables/user_accounts/{account_id}/")

    assert deleted.status_code == 204, deleted.text
    [entry] = await audit_entries(owner, credential["id"])
    assert (entry["action"], entry["table_name"], entry["actor_id"]) == ("delete", "user_credentials", superuser.id)
    assert entry["changes"]["deleted_with"] == {"old": None, "new": f"user_accounts {account_id}"}
    assert entry["changes"]["credential_type"] == {"old": "alpaca", "new": None}
    logged = json.dumps(entry["changes"])
    for secret in (credential["api_key"], credential["secret_key"], envelopes["api_key"], envelopes["secret_key"]):
        assert secret not in logged


@pytest.mark.asyncio
async def test_pages_carry_a_content_security_policy(server) -> None:
    """Make sure the admin's page and API answers carry a CSP that allows only the admin's own scripts."""
    page = httpx.get(f"{server.admin_url}/")
    policy = page.headers["content-security-policy"]

    assert "script-src 'self';" in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<title>Orchestrator admin</title>" in page.text
    assert httpx.get(f"{server.admin_url}/odb/admin.js").status_code == 200
