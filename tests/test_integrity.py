"""Integrity: envelopes bound to every identifying field, no raw driver error, strict inputs.

Each test names the defect of issue 11 (or 12) it guards; each fails on the
code before format v2 and the typed errors.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import uuid
from dataclasses import replace

import asyncpg
import asyncpg.exceptions
import pytest
from legacy_formats import legacy_mfa
from pydantic import ValidationError

from orchestrator_db import (
    AccountNotFound,
    CredentialNotFound,
    DecryptionError,
    OrchestratorDBError,
    user_scope,
)
from orchestrator_db.admin.auth import KeyRingMFAEncryption
from orchestrator_db.crypto import mfa
from orchestrator_db.crypto.envelopes import Cell, seal, unseal
from orchestrator_db.crypto.keyring import (
    ENVELOPE_PATTERN,
    KeyRing,
    envelope_sql_predicate,
    generate_key_entry,
    is_envelope,
)

API_KEY = "AKIA-integrity-api-5d1e"
SECRET_KEY = "sk-integrity-secret-77c2"
UTC = datetime.timezone.utc


async def _row(owner: asyncpg.Pool, user_id: str, credential_type: str) -> asyncpg.Record:
    return await owner.fetchrow(
        "SELECT * FROM public.user_credentials WHERE user_id = $1 AND credential_type = $2",
        user_id,
        credential_type,
    )


async def _two_credentials(user_id: str) -> None:
    async with user_scope(user_id) as scope:
        await scope.put_credential("alpaca", "alpaca-api", "alpaca-secret")
        await scope.put_credential("polygon", "polygon-api", "polygon-secret")


async def _swap_types(owner: asyncpg.Pool, user_id: str) -> None:
    """The attack of issue 11: three UPDATEs swap the credential_type of two rows."""
    async with owner.acquire() as connection, connection.transaction():
        await connection.execute(
            "UPDATE public.user_credentials SET credential_type = 'swap-tmp' "
            "WHERE user_id = $1 AND credential_type = 'alpaca'",
            user_id,
        )
        await connection.execute(
            "UPDATE public.user_credentials SET credential_type = 'alpaca' "
            "WHERE user_id = $1 AND credential_type = 'polygon'",
            user_id,
        )
        await connection.execute(
            "UPDATE public.user_credentials SET credential_type = 'polygon' "
            "WHERE user_id = $1 AND credential_type = 'swap-tmp'",
            user_id,
        )


# Format v2: every identifying field is bound #################################


@pytest.mark.asyncio
async def test_swapped_credential_type_fails_to_decrypt(user_with_account, owner):
    """Make sure swapping the credential_type of two of a user's rows makes both fail with DecryptionError, never the other key."""
    await _two_credentials(user_with_account)
    await _swap_types(owner, user_with_account)

    async with user_scope(user_with_account) as scope:
        for credential_type in ("alpaca", "polygon"):
            with pytest.raises(DecryptionError) as info:
                await scope.get_credential(credential_type)
            assert "api" not in str(info.value).replace("api_key", "")
        with pytest.raises(DecryptionError):
            await scope.list_credentials()


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["row", "user", "column", "type"])
async def test_moved_envelope_fails_for_every_identifying_field(field, new_user, owner):
    """Make sure an envelope moved to another row, user, column or credential type fails with DecryptionError."""
    alice, bob = await new_user(), await new_user()
    for user_id in (alice, bob):
        async with user_scope(user_id) as scope:
            await scope.create_account("Paper")
        await _two_credentials(user_id)
    source = await _row(owner, alice, "alpaca")
    target_user, target_type, target_column = alice, "polygon", "api_key"
    if field == "row":
        target_type = "polygon"
    elif field == "user":
        target_user, target_type = bob, "alpaca"
    elif field == "column":
        target_type, target_column = "alpaca", "secret_key"
    elif field == "type":
        # Same row, same id: only the credential_type around the envelope changes.
        await owner.execute(
            "DELETE FROM public.user_credentials WHERE user_id = $1 AND credential_type = 'polygon'",
            alice,
        )
        await owner.execute(
            "UPDATE public.user_credentials SET credential_type = 'polygon' WHERE id = $1",
            source["id"],
        )
    if field != "type":
        await owner.execute(
            f"UPDATE public.user_credentials SET {target_column} = $3 "
            "WHERE user_id = $1 AND credential_type = $2",
            target_user,
            target_type,
            source["api_key"],
        )
    async with user_scope(target_user) as scope:
        with pytest.raises(DecryptionError):
            await scope.get_credential(target_type)


def test_each_bound_field_changes_the_aad():
    """Make sure opening a v2 envelope with any one identifying field changed fails (account id included)."""
    ring = KeyRing.parse(generate_key_entry("kid"))
    cell = Cell.of(
        "api_key",
        row_id=uuid.uuid4(),
        user_id="u-1",
        account_id=uuid.uuid4(),
        credential_type="alpaca",
    )
    envelope = seal(ring, API_KEY, cell)
    assert envelope.startswith("v2.kid.")
    assert unseal(ring, envelope, cell) == API_KEY
    changes = {
        "column": "secret_key",
        "row_id": str(uuid.uuid4()),
        "user_id": "u-2",
        "account_id": str(uuid.uuid4()),
        "credential_type": "polygon",
    }
    for name, value in changes.items():
        with pytest.raises(DecryptionError) as info:
            unseal(ring, envelope, replace(cell, **{name: value}))
        assert API_KEY not in str(info.value) and envelope not in str(info.value)


# One envelope pattern ########################################################


@pytest.mark.asyncio
async def test_sql_envelope_predicate_agrees_with_is_envelope(owner):
    """Make sure the rotation SQL's idea of an envelope is exactly crypto's (one definition)."""
    ring = KeyRing.parse(generate_key_entry("k_1"))
    real = ring.encrypt("x", binding=("t",))
    body = real.split(".", 2)[2]
    samples = [
        real,
        "v1" + real[2:],
        "v3" + real[2:],
        real[:-1],
        real + "AAA",
        "v2.k_1." + body[:37],
        "v2.k_1." + body[:38],
        "v2." + "k" * 33 + "." + body,
        "v2..x" + body,
        "v2.k.1." + body,
        "plain text secret",
        "",
    ]
    for sample in samples:
        in_sql = await owner.fetchval(f"SELECT {envelope_sql_predicate('$1::text')}", sample)
        assert bool(in_sql) == is_envelope(sample), sample
    assert "v1|v2" in ENVELOPE_PATTERN


# MFA secrets: one format, a migration path ###################################


def test_mfa_secrets_use_the_envelope_format_and_refuse_the_old_one():
    """Make sure MFA secrets are odbmfa- plus a v2 envelope, and the admin no longer accepts the legacy format."""
    entry = generate_key_entry("m1")
    provider = KeyRingMFAEncryption(KeyRing.parse(entry))
    stored = provider.encrypt("JBSWY3DPEHPK3PXP")
    assert stored.startswith("odbmfa-v2.m1.") and is_envelope(stored.removeprefix("odbmfa-"))
    assert provider.decrypt(stored) == "JBSWY3DPEHPK3PXP"
    # A credential envelope of the same key does not open as an MFA secret.
    credential = KeyRing.parse(entry).encrypt("JBSWY3DPEHPK3PXP", binding=("authenticator_secret", "secret"))
    with pytest.raises(DecryptionError):
        provider.decrypt(f"odbmfa-{credential}")
    with pytest.raises(DecryptionError):
        provider.decrypt(legacy_mfa(entry, "JBSWY3DPEHPK3PXP"))


def test_rotation_reseals_legacy_mfa_secrets():
    """Make sure the migration path re-seals a legacy MFA secret as v2 under the active key."""
    old, new = generate_key_entry("old"), generate_key_entry("new")
    ring = KeyRing.parse(f"{new},{old}")
    legacy = legacy_mfa(old, "JBSWY3DPEHPK3PXP")
    resealed = mfa.reseal(ring, legacy)
    assert resealed.startswith("odbmfa-v2.new.") and mfa.is_current(ring, resealed)
    assert KeyRingMFAEncryption(ring).decrypt(resealed) == "JBSWY3DPEHPK3PXP"
    tampered = legacy[:-2] + ("A" if legacy[-2] != "A" else "B") + legacy[-1]
    with pytest.raises(DecryptionError):
        mfa.reseal(ring, tampered)


# expires_at: strict input, any stored value readable #########################


@pytest.mark.parametrize(
    "expires_at",
    [
        -1,
        0,
        1.5,
        1700000000,
        "-1",
        "2030-01-01T00:00:00Z",
        b"2030",
        datetime.datetime(2030, 1, 1),  # naive
        datetime.datetime.max.replace(tzinfo=UTC),
        datetime.datetime.min.replace(tzinfo=UTC),
        datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=14))),
        datetime.datetime(9999, 12, 31, 23, tzinfo=datetime.timezone(datetime.timedelta(hours=-14))),
    ],
    ids=repr,
)
@pytest.mark.asyncio
async def test_expires_at_is_strict(expires_at, user_with_account, owner):
    """Make sure expires_at takes only an aware datetime PostgreSQL stores as itself; anything else is a ValidationError and writes nothing."""
    async with user_scope(user_with_account) as scope:
        with pytest.raises(ValidationError) as info:
            await scope.put_credential("alpaca", API_KEY, SECRET_KEY, expires_at=expires_at)
    assert [e["loc"] for e in info.value.errors()] == [("expires_at",)]
    assert API_KEY not in str(info.value) and SECRET_KEY not in str(info.value)
    assert await _row(owner, user_with_account, "alpaca") is None


@pytest.mark.asyncio
@pytest.mark.parametrize("stored, usable", [("infinity", True), ("-infinity", False)])
async def test_reads_survive_infinite_expiry(stored, usable, user_with_account, owner):
    """Make sure an 'infinity' / '-infinity' expires_at written by another tool reads as never expiring / expired, not a TypeError."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
        await scope.put_credential("polygon", "p-api", "p-secret")
    await owner.execute(
        f"UPDATE public.user_credentials SET expires_at = '{stored}' "
        "WHERE user_id = $1 AND credential_type = 'alpaca'",
        user_with_account,
    )
    async with user_scope(user_with_account) as scope:
        usable_types = [c.credential_type for c in await scope.list_credentials()]
        everything = await scope.list_credentials(include_inactive=True)
        if usable:
            credential = await scope.get_credential("alpaca")
            assert credential.api_key.get_secret_value() == API_KEY
            assert credential.expires_at is not None and credential.expires_at.tzinfo is not None
        else:
            with pytest.raises(CredentialNotFound) as info:
                await scope.get_credential("alpaca")
            assert info.value.reason == "expired"
    assert usable_types == (["alpaca", "polygon"] if usable else ["polygon"])
    assert [c.credential_type for c in everything] == ["alpaca", "polygon"]


# Whitespace-only secrets #####################################################


@pytest.mark.asyncio
@pytest.mark.parametrize("api_key, secret_key", [("   ", "sk-ok"), ("ak-ok", " \t\n"), (" ", " ")])
async def test_whitespace_only_secrets_are_refused(api_key, secret_key, user_with_account, owner):
    """Make sure a secret that is empty after stripping is a ValidationError naming the field, never echoing it, writing nothing."""
    async with user_scope(user_with_account) as scope:
        with pytest.raises(ValidationError) as info:
            await scope.put_credential("alpaca", api_key, secret_key)
    errors = info.value.errors()
    assert {e["loc"][0] for e in errors} <= {"api_key", "secret_key"} and errors
    assert all("whitespace" in e["msg"] for e in errors)
    assert all(e["input"] == "**********" for e in errors)
    assert await _row(owner, user_with_account, "alpaca") is None


# No raw driver error #########################################################


@pytest.mark.asyncio
async def test_put_racing_account_recreation_raises_no_driver_error(new_user, owner):
    """Make sure first writers queued on an account that is deleted and re-created get AccountNotFound or succeed, never a UniqueViolation."""
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper")
    writers = 6
    outcomes: list[object] = []

    async def put(number: int) -> None:
        try:
            async with user_scope(user_id) as scope:
                await scope.put_credential("alpaca", f"api-{number}", f"secret-{number}")
            outcomes.append("ok")
        except Exception as error:  # recorded and asserted on below
            outcomes.append(error)

    async with owner.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute("DELETE FROM public.user_accounts WHERE user_id = $1", user_id)
            tasks = [asyncio.create_task(put(n)) for n in range(writers)]
            for _ in range(200):  # until every writer waits on the deleted account's lock
                waiting = await owner.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE '%credential_slot%'"
                )
                if waiting == writers:
                    break
                await asyncio.sleep(0.02)
            assert waiting == writers
            await connection.execute(
                "INSERT INTO public.user_accounts (user_id, account_name) VALUES ($1, 'Again')",
                user_id,
            )
        finally:
            await transaction.commit()
    await asyncio.gather(*tasks)

    assert len(outcomes) == writers
    for outcome in outcomes:
        assert outcome == "ok" or isinstance(outcome, AccountNotFound), repr(outcome)
    count = await owner.fetchval(
        "SELECT count(*) FROM public.user_credentials WHERE user_id = $1", user_id
    )
    assert count == outcomes.count("ok") or (count == 1 and "ok" in outcomes)
    assert count <= 1


def _server_error_classes() -> list[type[asyncpg.PostgresError]]:
    """Every asyncpg class for a server error state (warnings and successes excluded)."""
    found = []
    for _, cls in inspect.getmembers(asyncpg.exceptions, inspect.isclass):
        sqlstate = getattr(cls, "sqlstate", None)
        if (
            issubclass(cls, asyncpg.PostgresError)
            and isinstance(sqlstate, str)
            and len(sqlstate) == 5
            and sqlstate[:2] not in ("00", "01", "02")
        ):
            found.append(cls)
    return found


@pytest.mark.asyncio
async def test_no_driver_error_escapes_the_public_api(new_user, owner):
    """Make sure every server error the write statements can meet surfaces as a typed project error: the list of escaping asyncpg classes is empty."""
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper")
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
    # A trigger of the owner's that raises the SQLSTATE this test names, for
    # this one user only: the server itself raises each error.
    await owner.execute(
        "CREATE TABLE public.odb_test_raise (user_id text PRIMARY KEY, errcode text NOT NULL)"
    )
    await owner.execute("""
        CREATE FUNCTION public.odb_test_raise() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE code text;
        BEGIN
            SELECT r.errcode INTO code FROM public.odb_test_raise r
            WHERE r.user_id = COALESCE(NEW.user_id, OLD.user_id);
            IF code IS NOT NULL THEN
                RAISE EXCEPTION 'injected' USING ERRCODE = code;
            END IF;
            RETURN COALESCE(NEW, OLD);
        END $$""")
    for table in ("user_credentials", "user_accounts"):
        await owner.execute(
            f"CREATE TRIGGER odb_test_raise BEFORE INSERT OR UPDATE OR DELETE ON public.{table} "
            "FOR EACH ROW EXECUTE FUNCTION public.odb_test_raise()"
        )
    operations = [
        lambda scope: scope.put_credential("alpaca", "new-api", "new-secret"),
        lambda scope: scope.put_credential("polygon", "new-api", "new-secret"),
        lambda scope: scope.deactivate_credential("alpaca"),
        lambda scope: scope.delete_credential("alpaca"),
        lambda scope: scope.delete_account(),
    ]
    escaped: set[str] = set()
    untyped: set[str] = set()
    try:
        for cls in _server_error_classes():
            await owner.execute(
                "INSERT INTO public.odb_test_raise VALUES ($1, $2) "
                "ON CONFLICT (user_id) DO UPDATE SET errcode = EXCLUDED.errcode",
                user_id,
                cls.sqlstate,
            )
            for operation in operations:
                try:
                    async with user_scope(user_id) as scope:
                        await operation(scope)
                except asyncpg.PostgresError as error:
                    escaped.add(type(error).__name__)
                except OrchestratorDBError as error:
                    assert "injected" not in str(error)
                except Exception as error:  # anything else is a finding too
                    untyped.add(f"{cls.__name__}: {type(error).__name__}")
                else:
                    untyped.add(f"{cls.__name__}: no error")
    finally:
        for table in ("user_credentials", "user_accounts"):
            await owner.execute(f"DROP TRIGGER odb_test_raise ON public.{table}")
        await owner.execute("DROP FUNCTION public.odb_test_raise()")
        await owner.execute("DROP TABLE public.odb_test_raise")
    assert escaped == set()
    assert untyped == set()
    assert len(_server_error_classes()) > 200
