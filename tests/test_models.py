"""The pydantic models: import, validation of real rows, JSON, secrets, bad input.

Rows come from real Piccolo queries run inside ``user_scope`` (the
application role, under row-level security); row counts that prove
"nothing was written" are read as the owner.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr, ValidationError

import orchestrator_db.models as models
import orchestrator_db.scope as scope_module
from orchestrator_db import user_scope
from orchestrator_db.models import (
    UserAccount,
    UserAccountCreate,
    UserCredential,
    UserCredentialInput,
)
from orchestrator_db.tables import UserAccounts, UserCredentials

API_KEY = "AKIA-plaintext-api-key-7f3a"
SECRET_KEY = "sk-plaintext-secret-key-91c4"
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)


def account_row(**overrides: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "user_id": "user-1",
        "account_name": "Paper Account",
        "is_active": True,
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }


def credential_row(**overrides: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "user_account_id": uuid.uuid4(),
        "user_id": "user-1",
        "credential_type": "alpaca",
        "api_key": API_KEY,
        "secret_key": SECRET_KEY,
        "is_active": True,
        "expires_at": None,
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def count(owner: asyncpg.Pool, table: str, user_id: str) -> int:
    return await owner.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id)


# Import #####################################################################


def test_models_exported() -> None:
    """Make sure the read and input models are importable and listed in __all__."""
    for name in ("UserAccount", "UserCredential", "UserAccountCreate", "UserCredentialInput"):
        assert name in models.__all__
        assert getattr(models, name).__name__ == name
    for name in models.__all__:
        assert hasattr(models, name), name


def test_models_import_inside_running_event_loop() -> None:
    """Make sure `from orchestrator_db.models import UserAccount, UserCredential` works in a fresh async app."""
    program = (
        "import asyncio, datetime, uuid\n"
        "async def main():\n"
        "    from orchestrator_db.models import UserAccount, UserCredential\n"
        "    now = datetime.datetime.now(datetime.timezone.utc)\n"
        "    a = UserAccount(id=uuid.uuid4(), user_id='u', account_name='A',\n"
        "                    is_active=True, created_at=now, updated_at=now)\n"
        "    print(UserCredential.__name__, a.account_name)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "UserCredential A"


# Validating real rows #######################################################


@pytest.mark.asyncio
async def test_account_model_validates_select_and_objects(user_with_account: str) -> None:
    """Make sure UserAccount validates both a select() row and an objects() instance, to the same values."""
    async with user_scope(user_with_account) as scope:
        stored = await scope.get_account()
        rows = await UserAccounts.select()
        objects = await UserAccounts.objects()

    assert len(rows) == 1 and len(objects) == 1  # RLS: only this user's account
    from_row = UserAccount.model_validate(rows[0])
    from_object = UserAccount.model_validate(objects[0])
    assert from_row == from_object == stored
    assert from_row.user_id == user_with_account
    assert from_row.account_name == "Paper Account"
    assert isinstance(from_row.id, uuid.UUID)
    assert from_row.created_at.tzinfo is not None


@pytest.mark.asyncio
async def test_credential_model_validates_select_and_objects(user_with_account: str) -> None:
    """Make sure UserCredential validates select() rows and objects() instances, holding the stored envelope as a SecretStr."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
        rows = await UserCredentials.select()
        objects = await UserCredentials.objects()

    assert len(rows) == 1 and len(objects) == 1
    from_row = UserCredential.model_validate(rows[0])
    from_object = UserCredential.model_validate(objects[0])
    assert from_row == from_object
    assert from_row.user_id == user_with_account
    assert from_row.credential_type == "alpaca"
    assert isinstance(from_row.api_key, SecretStr)
    # What the database holds is ciphertext, never the plaintext.
    envelope = from_row.api_key.get_secret_value()
    assert envelope == rows[0]["api_key"] and envelope.startswith("v2.")
    assert API_KEY not in envelope
    for text in (repr(from_row), str(from_row), from_row.model_dump_json()):
        assert_no_secret(text, rows[0]["api_key"], rows[0]["secret_key"])


@pytest.mark.asyncio
async def test_account_json_types(user_with_account: str) -> None:
    """Make sure a stored account serializes its UUIDs as str and datetimes as ISO-8601 strings."""
    async with user_scope(user_with_account):
        row = (await UserAccounts.select())[0]
    data = json.loads(UserAccount.model_validate(row).model_dump_json())
    assert data["id"] == str(row["id"])
    assert data["user_id"] == user_with_account
    for field in ("created_at", "updated_at"):
        assert isinstance(data[field], str)
        assert datetime.datetime.fromisoformat(data[field]) == row[field]


def test_credential_json_types() -> None:
    """Make sure a credential serializes UUIDs as str, datetimes as ISO-8601 and None as null."""
    account_id, expires = uuid.uuid4(), NOW + datetime.timedelta(days=30)
    model = UserCredential.model_validate(
        credential_row(user_account_id=account_id, expires_at=expires)
    )
    data = json.loads(model.model_dump_json())
    assert data["user_account_id"] == str(account_id)
    assert data["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert datetime.datetime.fromisoformat(data["created_at"]) == NOW
    never = json.loads(UserCredential.model_validate(credential_row()).model_dump_json())
    assert never["expires_at"] is None


# Required fields and lengths ################################################


@pytest.mark.parametrize("field", list(account_row()))
def test_account_fields_required(field: str) -> None:
    """Make sure every column of a stored account must be present."""
    row = account_row()
    del row[field]
    with pytest.raises(ValidationError) as caught:
        UserAccount.model_validate(row)
    assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("field", list(credential_row()))
def test_credential_fields_required(field: str) -> None:
    """Make sure every column of a stored credential must be present (expires_at may be None, not absent)."""
    row = credential_row()
    del row[field]
    with pytest.raises(ValidationError) as caught:
        UserCredential.model_validate(row)
    assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("field", ["user_id", "account_name", "is_active", "created_at"])
def test_account_fields_not_nullable(field: str) -> None:
    """Make sure NOT NULL columns of an account refuse None."""
    with pytest.raises(ValidationError):
        UserAccount.model_validate(account_row(**{field: None}))


def test_account_name_length() -> None:
    """Make sure account_name accepts 255 characters and refuses 256."""
    assert UserAccount.model_validate(account_row(account_name="x" * 255)).account_name == "x" * 255
    with pytest.raises(ValidationError):
        UserAccount.model_validate(account_row(account_name="x" * 256))


def test_credential_type_length() -> None:
    """Make sure credential_type accepts 50 characters and refuses 51."""
    fifty = UserCredential.model_validate(credential_row(credential_type="a" * 50))
    assert fifty.credential_type == "a" * 50
    with pytest.raises(ValidationError):
        UserCredential.model_validate(credential_row(credential_type="a" * 51))


# Secrets ####################################################################


def test_secrets_are_secretstr_and_hidden() -> None:
    """Make sure api_key and secret_key never show in repr, str or JSON unless explicitly revealed."""
    model = UserCredential.model_validate(credential_row())
    assert isinstance(model.api_key, SecretStr) and isinstance(model.secret_key, SecretStr)
    for text in (
        repr(model),
        str(model),
        model.model_dump_json(),
        json.dumps(model.model_dump(mode="json")),
        repr(model.model_dump()),
    ):
        assert_no_secret(text, API_KEY, SECRET_KEY)
    assert model.api_key.get_secret_value() == API_KEY
    assert model.secret_key.get_secret_value() == SECRET_KEY


@pytest.mark.asyncio
async def test_decrypted_credential_hides_plaintext(user_with_account: str) -> None:
    """Make sure the credential the public API returns hides the decrypted plaintext but reveals it on request."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("polygon", API_KEY, SECRET_KEY)
        credential = await scope.get_credential("polygon")
    for text in (repr(credential), str(credential), credential.model_dump_json()):
        assert_no_secret(text, API_KEY, SECRET_KEY)
    assert credential.api_key.get_secret_value() == API_KEY
    assert credential.secret_key.get_secret_value() == SECRET_KEY


# Input models ###############################################################


def test_account_create_accepts_valid_name() -> None:
    """Make sure UserAccountCreate accepts a normal name and one of exactly 255 characters."""
    assert UserAccountCreate(account_name="Trading Account 1").account_name == "Trading Account 1"
    assert UserAccountCreate(account_name="x" * 255).account_name == "x" * 255


@pytest.mark.parametrize(
    "values",
    [{"account_name": "x" * 256}, {}, {"account_name": ""}, {"account_name": 123}, {"account_name": None}],
    ids=["overlong", "missing", "empty", "int", "none"],
)
def test_account_create_rejects(values: dict) -> None:
    """Make sure UserAccountCreate refuses an overlong, missing, empty or non-str account_name."""
    with pytest.raises(ValidationError) as caught:
        UserAccountCreate(**values)
    assert caught.value.errors()[0]["loc"] == ("account_name",)


def test_credential_input_accepts_valid() -> None:
    """Make sure UserCredentialInput accepts a well-formed credential and keeps the secrets hidden."""
    data = UserCredentialInput(credential_type="alpaca", api_key=API_KEY, secret_key=SECRET_KEY)
    assert data.api_key.get_secret_value() == API_KEY
    assert data.expires_at is None
    assert_no_secret(repr(data) + str(data) + data.model_dump_json(), API_KEY, SECRET_KEY)


@pytest.mark.parametrize(
    "overrides, bad_field",
    [
        ({"api_key": ""}, "api_key"),
        ({"secret_key": ""}, "secret_key"),
        ({"api_key": 12345678}, "api_key"),
        ({"secret_key": b"bytes-are-not-str"}, "secret_key"),
        ({"api_key": None}, "api_key"),
        ({"credential_type": "Alpaca"}, "credential_type"),
        ({"credential_type": "a" * 51}, "credential_type"),
        ({"credential_type": ""}, "credential_type"),
        ({"credential_type": 7}, "credential_type"),
    ],
    ids=[
        "empty-api-key",
        "empty-secret-key",
        "int-api-key",
        "bytes-secret-key",
        "none-api-key",
        "upper-type",
        "long-type",
        "empty-type",
        "int-type",
    ],
)
def test_credential_input_rejects(overrides: dict, bad_field: str) -> None:
    """Make sure UserCredentialInput refuses bad fields and its error never repeats a secret."""
    values = {"credential_type": "alpaca", "api_key": API_KEY, "secret_key": SECRET_KEY, **overrides}
    with pytest.raises(ValidationError) as caught:
        UserCredentialInput(**values)
    assert [error["loc"] for error in caught.value.errors()] == [(bad_field,)]
    assert_no_secret(str(caught.value) + repr(caught.value), API_KEY, SECRET_KEY)


@pytest.mark.parametrize("missing", ["credential_type", "api_key", "secret_key"])
def test_credential_input_requires_fields(missing: str) -> None:
    """Make sure each required credential field must be given, and the error does not echo the others' secrets."""
    values = {"credential_type": "alpaca", "api_key": API_KEY, "secret_key": SECRET_KEY}
    del values[missing]
    with pytest.raises(ValidationError) as caught:
        UserCredentialInput(**values)
    assert [error["loc"] for error in caught.value.errors()] == [(missing,)]
    assert_no_secret(str(caught.value), API_KEY, SECRET_KEY)


def test_overlong_secret_not_echoed() -> None:
    """Make sure a secret refused for its length does not appear in the error."""
    huge = "S3CR3T-" + "x" * (models.SECRET_MAX_LENGTH + 1)
    with pytest.raises(ValidationError) as caught:
        UserCredentialInput(credential_type="alpaca", api_key=huge, secret_key=SECRET_KEY)
    assert "S3CR3T-" not in str(caught.value)
    assert "S3CR3T-" not in repr(caught.value)
    assert [error["loc"] for error in caught.value.errors()] == [("api_key",)]


# Bad input through the public API ###########################################


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "account_name", ["x" * 256, "", None, 42], ids=["overlong", "empty", "none", "int"]
)
async def test_create_account_bad_name_writes_nothing(
    owner: asyncpg.Pool, new_user, account_name: Any
) -> None:
    """Make sure create_account with a bad account_name raises ValidationError and stores no account."""
    user_id = await new_user()
    with pytest.raises(ValidationError):
        async with user_scope(user_id) as scope:
            await scope.create_account(account_name)
    assert await count(owner, "user_accounts", user_id) == 0


@pytest.mark.asyncio
async def test_create_account_missing_name_writes_nothing(owner: asyncpg.Pool, new_user) -> None:
    """Make sure create_account without an account_name fails and stores no account."""
    user_id = await new_user()
    with pytest.raises(TypeError):
        async with user_scope(user_id) as scope:
            await scope.create_account()  # type: ignore[call-arg]
    assert await count(owner, "user_accounts", user_id) == 0


@pytest.mark.asyncio
async def test_empty_user_id_refused_before_database(
    owner: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make sure user_scope('') raises ValueError without taking a connection, and nothing is written."""
    acquired: list[object] = []
    real_acquire = scope_module.acquire

    async def watching_acquire(engine: object) -> object:
        acquired.append(engine)
        return await real_acquire(engine)

    monkeypatch.setattr(scope_module, "acquire", watching_acquire)
    body_ran = False
    with pytest.raises(ValueError, match="user_id"):
        async with user_scope("") as scope:
            body_ran = True
            await scope.create_account("Paper Account")
    assert body_ran is False
    assert acquired == []
    assert await count(owner, "user_accounts", "") == 0


@pytest.mark.asyncio
async def test_bad_credential_through_api_writes_nothing(
    owner: asyncpg.Pool, user_with_account: str
) -> None:
    """Make sure put_credential with an empty or missing secret raises ValidationError, echoes no secret and stores nothing."""
    for api_key, secret_key in (("", SECRET_KEY), (API_KEY, ""), (API_KEY, None)):
        with pytest.raises(ValidationError) as caught:
            async with user_scope(user_with_account) as scope:
                await scope.put_credential("alpaca", api_key, secret_key)
        assert_no_secret(str(caught.value), API_KEY, SECRET_KEY)
    with pytest.raises(ValidationError):
        async with user_scope(user_with_account) as scope:
            await scope.put_credential("x" * 51, API_KEY, SECRET_KEY)
    assert await count(owner, "user_credentials", user_with_account) == 0


@pytest.mark.asyncio
async def test_failed_write_after_good_one_rolls_back_scope(
    owner: asyncpg.Pool, new_user
) -> None:
    """Make sure a scope that fails on bad input after a good write leaves nothing behind."""
    user_id = await new_user()
    with pytest.raises(ValidationError):
        async with user_scope(user_id) as scope:
            await scope.create_account("Paper Account")
            await scope.put_credential("alpaca", API_KEY, "")
    assert await count(owner, "user_accounts", user_id) == 0
    assert await count(owner, "user_credentials", user_id) == 0
