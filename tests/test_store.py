"""The credential API of a user scope: behaviour, hygiene and tamper resistance."""

from __future__ import annotations

import datetime
import logging
import uuid

import asyncpg
import pytest
from pydantic import ValidationError

from orchestrator_db import (
    AccountExists,
    AccountNotFound,
    CredentialNotFound,
    DecryptionError,
    UserNotFound,
    user_scope,
)
from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry, is_envelope
from orchestrator_db.crypto.providers import get_key_ring, use_key_ring

pytestmark = pytest.mark.asyncio

API_KEY = "AKIA-PLAINTEXT-api-7f3c"
SECRET_KEY = "sk-PLAINTEXT-secret-91ab"


async def _row(owner: asyncpg.Pool, user_id: str, credential_type: str) -> asyncpg.Record:
    return await owner.fetchrow(
        "SELECT * FROM user_credentials WHERE user_id = $1 AND credential_type = $2",
        user_id,
        credential_type,
    )


async def _count(owner: asyncpg.Pool, user_id: str) -> int:
    return await owner.fetchval(
        "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_id
    )


# Accounts ####################################################################


async def test_account_lifecycle(new_user):
    """Make sure an account can be created, read back and deleted, once per user."""
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        created = await scope.create_account("  Paper Account ")
    assert created.user_id == user_id
    assert created.account_name == "Paper Account"
    assert created.is_active is True

    async with user_scope(user_id) as scope:
        assert (await scope.get_account()).id == created.id
        with pytest.raises(AccountExists):
            await scope.create_account("Second")

    async with user_scope(user_id) as scope:
        await scope.delete_account()
    async with user_scope(user_id) as scope:
        with pytest.raises(AccountNotFound):
            await scope.get_account()
        with pytest.raises(AccountNotFound):
            await scope.delete_account()


async def test_account_needs_a_better_auth_user():
    """Make sure an account for an unknown Better Auth user is refused with UserNotFound."""
    with pytest.raises(UserNotFound):
        async with user_scope(f"ghost-{uuid.uuid4()}") as scope:
            await scope.create_account("Paper")


async def test_put_credential_without_account(new_user, owner):
    """Make sure put_credential before create_account raises AccountNotFound and writes nothing."""
    user_id = await new_user()
    with pytest.raises(AccountNotFound):
        async with user_scope(user_id) as scope:
            await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
    assert await _count(owner, user_id) == 0


# Credentials #################################################################


async def test_put_then_get_round_trips(user_with_account, owner):
    """Make sure a stored credential decrypts to exactly what was written, and is stored as envelopes."""
    async with user_scope(user_with_account) as scope:
        stored = await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
    async with user_scope(user_with_account) as scope:
        read = await scope.get_credential("alpaca")
    assert read.id == stored.id
    assert read.api_key.get_secret_value() == API_KEY
    assert read.secret_key.get_secret_value() == SECRET_KEY

    row = await _row(owner, user_with_account, "alpaca")
    assert is_envelope(row["api_key"]) and is_envelope(row["secret_key"])
    assert API_KEY not in row["api_key"] and SECRET_KEY not in row["secret_key"]
    assert row["api_key"].split(".")[1] == get_key_ring().active_key_id


async def test_replace_keeps_the_row_and_reactivates(user_with_account, owner):
    """Make sure replacing a credential updates it in place, re-encrypts it and reactivates it."""
    async with user_scope(user_with_account) as scope:
        first = await scope.put_credential("polygon", "old-key", "old-secret")
        await scope.deactivate_credential("polygon")
    before = await _row(owner, user_with_account, "polygon")
    assert before["is_active"] is False

    async with user_scope(user_with_account) as scope:
        second = await scope.put_credential("polygon", "new-key", "new-secret")
    after = await _row(owner, user_with_account, "polygon")
    assert second.id == first.id == after["id"]
    assert after["is_active"] is True
    assert after["api_key"] != before["api_key"]
    assert await _count(owner, user_with_account) == 1
    async with user_scope(user_with_account) as scope:
        read = await scope.get_credential("polygon")
    assert read.api_key.get_secret_value() == "new-key"
    assert read.secret_key.get_secret_value() == "new-secret"


async def test_inactive_and_expired_are_refused_and_say_why(user_with_account):
    """Make sure get_credential refuses missing, inactive and expired credentials, naming which."""
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
        await scope.put_credential("polygon", API_KEY, SECRET_KEY, expires_at=past)
        await scope.put_credential("tradier", API_KEY, SECRET_KEY, expires_at=future)
        await scope.deactivate_credential("alpaca")

    async with user_scope(user_with_account) as scope:
        for credential_type, reason in [
            ("alpaca", "inactive"),
            ("polygon", "expired"),
            ("binance", "missing"),
        ]:
            with pytest.raises(CredentialNotFound) as caught:
                await scope.get_credential(credential_type)
            assert caught.value.reason == reason
            assert reason in str(caught.value)
        assert (await scope.get_credential("tradier")).expires_at == future

        usable = await scope.list_credentials()
        everything = await scope.list_credentials(include_inactive=True)
    assert [c.credential_type for c in usable] == ["tradier"]
    assert [c.credential_type for c in everything] == ["alpaca", "polygon", "tradier"]


async def test_delete_credential_and_account_cascade(user_with_account, owner):
    """Make sure delete_credential removes one row and delete_account cascades to the rest."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
        await scope.put_credential("polygon", API_KEY, SECRET_KEY)
        await scope.delete_credential("alpaca")
        with pytest.raises(CredentialNotFound):
            await scope.delete_credential("alpaca")
    assert await _count(owner, user_with_account) == 1
    async with user_scope(user_with_account) as scope:
        await scope.delete_account()
    assert await _count(owner, user_with_account) == 0


async def test_deactivate_missing_credential(user_with_account):
    """Make sure deactivating a credential that does not exist says it is missing."""
    async with user_scope(user_with_account) as scope:
        with pytest.raises(CredentialNotFound) as caught:
            await scope.deactivate_credential("alpaca")
    assert caught.value.reason == "missing"


# Bad input ###################################################################


@pytest.mark.parametrize(
    "arguments",
    [
        {"credential_type": "alpaca", "api_key": "", "secret_key": SECRET_KEY},
        {"credential_type": "alpaca", "api_key": API_KEY, "secret_key": ""},
        {"credential_type": "a" * 51, "api_key": API_KEY, "secret_key": SECRET_KEY},
        {"credential_type": "Alpaca", "api_key": API_KEY, "secret_key": SECRET_KEY},
        {"credential_type": "alpaca", "api_key": 12345, "secret_key": SECRET_KEY},
        {"credential_type": "alpaca", "api_key": API_KEY, "secret_key": b"bytes"},
        {
            "credential_type": "alpaca",
            "api_key": API_KEY,
            "secret_key": SECRET_KEY,
            "expires_at": datetime.datetime(2030, 1, 1),  # naive: ambiguous
        },
    ],
)
async def test_bad_credential_input_is_a_validation_error(user_with_account, owner, arguments):
    """Make sure invalid credential input raises ValidationError, echoes no secret and writes nothing."""
    with pytest.raises(ValidationError) as caught:
        async with user_scope(user_with_account) as scope:
            await scope.put_credential(**arguments)
    for text in (str(caught.value), repr(caught.value), str(caught.value.errors())):
        assert API_KEY not in text and SECRET_KEY not in text
    assert await _count(owner, user_with_account) == 0


async def test_bad_account_name_is_a_validation_error(new_user, owner):
    """Make sure an overlong or blank account name raises ValidationError and writes nothing."""
    user_id = await new_user()
    for name in ["x" * 256, "   ", ""]:
        with pytest.raises(ValidationError):
            async with user_scope(user_id) as scope:
                await scope.create_account(name)
    assert not await owner.fetchval(
        "SELECT count(*) FROM user_accounts WHERE user_id = $1", user_id
    )


# Hygiene #####################################################################


async def test_no_plaintext_in_logs_reprs_json_or_errors(user_with_account, caplog):
    """Make sure plaintext secrets appear in no log line, repr, str, JSON dump or error message."""
    caplog.set_level(logging.DEBUG)
    messages = []
    async with user_scope(user_with_account) as scope:
        stored = await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
        read = await scope.get_credential("alpaca")
        listed = await scope.list_credentials()
        try:
            await scope.put_credential("alpaca", API_KEY, "")
        except ValidationError as error:
            messages.append(str(error))
            messages.append(repr(error))
    for model in [stored, read, *listed]:
        messages += [repr(model), str(model), model.model_dump_json(), repr(scope)]
        messages.append(str(model.model_dump()))
    messages.append(caplog.text)
    for text in messages:
        assert API_KEY not in text
        assert SECRET_KEY not in text
    assert read.api_key.get_secret_value() == API_KEY  # only an explicit reveal shows it


# Tamper ######################################################################


async def _two_users_with_credentials(new_user) -> tuple[str, str]:
    users = []
    for _ in range(2):
        user_id = await new_user()
        async with user_scope(user_id) as scope:
            await scope.create_account("Paper")
            await scope.put_credential("alpaca", API_KEY + user_id, SECRET_KEY)
            await scope.put_credential("polygon", "poly-" + user_id, "poly-secret")
        users.append(user_id)
    return users[0], users[1]


async def _set(owner, user_id, credential_type, column, value):
    await owner.execute(
        f"UPDATE user_credentials SET {column} = $3 WHERE user_id = $1 AND credential_type = $2",
        user_id,
        credential_type,
        value,
    )


async def _expect_decryption_error(user_id, credential_type="alpaca"):
    with pytest.raises(DecryptionError) as caught:
        async with user_scope(user_id) as scope:
            await scope.get_credential(credential_type)
    message = str(caught.value)
    assert API_KEY not in message and SECRET_KEY not in message and "poly-" not in message
    return message


def _flip_last_bit(envelope: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    middle = len(envelope) - 10
    flipped = alphabet[alphabet.index(envelope[middle]) ^ 1]
    return envelope[:middle] + flipped + envelope[middle + 1 :]


async def test_tampered_values_never_decrypt(new_user, owner):
    """Make sure flipped, truncated, swapped or re-keyed envelopes raise DecryptionError, never wrong plaintext."""
    alice, bob = await _two_users_with_credentials(new_user)
    alice_alpaca = await _row(owner, alice, "alpaca")
    alice_polygon = await _row(owner, alice, "polygon")
    bob_alpaca = await _row(owner, bob, "alpaca")

    cases = [
        ("api_key", _flip_last_bit(alice_alpaca["api_key"])),
        ("api_key", alice_alpaca["api_key"][:-6]),
        ("api_key", alice_polygon["api_key"]),  # another row of the same user
        ("api_key", bob_alpaca["api_key"]),  # another user's row
        ("api_key", alice_alpaca["secret_key"]),  # the other column of this row
        ("api_key", "v1.nosuchkey." + alice_alpaca["api_key"].split(".", 2)[2]),
        ("api_key", API_KEY),  # plaintext where an envelope belongs
    ]
    for column, bad_value in cases:
        await _set(owner, alice, "alpaca", column, bad_value)
        message = await _expect_decryption_error(alice)
        assert str(alice_alpaca["id"]) in message
        await _set(owner, alice, "alpaca", column, alice_alpaca[column])

    async with user_scope(alice) as scope:
        assert (await scope.get_credential("alpaca")).api_key.get_secret_value() == API_KEY + alice


async def test_key_removed_from_ring_fails_loudly(user_with_account):
    """Make sure a value whose key left the ring raises DecryptionError naming the key id."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
    original = get_key_ring()
    stranger = KeyRing.parse(generate_key_entry("other"))
    use_key_ring(stranger)
    try:
        message = await _expect_decryption_error(user_with_account)
    finally:
        use_key_ring(original)
    assert original.active_key_id in message
