"""One operation as its own transaction: reads in one round trip, a put in two, as safe as a scope.

Round trips are counted on the wire, by a loopback proxy between the
package's pool and the real PostgreSQL (orchestrator_db.devdb.roundtrips).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from orchestrator_db import (
    AccountNotFound,
    CredentialNotFound,
    ScopeError,
    close_pool,
    get_credential,
    list_credentials,
    open_pool,
    put_credential,
    user_scope,
)
from orchestrator_db.devdb.roundtrips import CountingProxy
from orchestrator_db.engine import forget_engine
from orchestrator_db.settings import database_settings, use_settings

pytestmark = pytest.mark.asyncio


async def _credentials(owner: asyncpg.Pool, user_id: str) -> dict[str, object]:
    rows = await owner.fetch(
        "SELECT credential_type, id FROM user_credentials WHERE user_id = $1", user_id
    )
    return {row["credential_type"]: row["id"] for row in rows}


async def test_put_inserts_then_replaces_in_place(user_with_account, owner) -> None:
    """Make sure a standalone put stores, replaces under the same row id, and reads back."""
    first = await put_credential(user_with_account, "alpaca", "AK-1", "SK-1")
    second = await put_credential(user_with_account, "alpaca", "AK-2", "SK-2")
    assert second.id == first.id
    assert await _credentials(owner, user_with_account) == {"alpaca": first.id}
    read = await get_credential(user_with_account, "alpaca")
    assert (read.api_key.get_secret_value(), read.secret_key.get_secret_value()) == ("AK-2", "SK-2")
    assert "AK-2" not in repr(second) and "SK-2" not in repr(read)


async def test_concurrent_first_puts_leave_one_row(user_with_account, owner) -> None:
    """Make sure 200 concurrent first puts of one type all succeed and leave exactly one row,
    holding one of the values that was put."""
    values = [(f"AK-{i}", f"SK-{i}") for i in range(200)]
    await asyncio.gather(
        *(put_credential(user_with_account, "polygon", api, secret) for api, secret in values)
    )
    assert list(await _credentials(owner, user_with_account)) == ["polygon"]
    stored = await get_credential(user_with_account, "polygon")
    assert (stored.api_key.get_secret_value(), stored.secret_key.get_secret_value()) in values


async def test_put_racing_account_deletion_and_recreation_is_typed(new_user, owner) -> None:
    """Make sure puts racing delete_account + create_account either succeed or raise
    AccountNotFound, never a driver error, and leave no credential outside an account."""
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper")

    async def churn() -> None:
        for _ in range(15):
            async with user_scope(user_id) as scope:
                await scope.delete_account()
            async with user_scope(user_id) as scope:
                await scope.create_account("Paper")

    async def put(index: int) -> str:
        try:
            await put_credential(user_id, "alpaca", f"AK-{index}", f"SK-{index}")
        except AccountNotFound:
            return "AccountNotFound"
        return "stored"

    outcomes = await asyncio.gather(churn(), *(put(i) for i in range(60)))
    assert set(outcomes[1:]) <= {"stored", "AccountNotFound"}
    # The account exists once the churn ends: a put then lands, whatever the race did.
    await put_credential(user_id, "alpaca", "AK-final", "SK-final")
    final = await get_credential(user_id, "alpaca")
    assert final.api_key.get_secret_value() == "AK-final"
    orphans = await owner.fetchval(
        "SELECT count(*) FROM user_credentials c WHERE NOT EXISTS "
        "(SELECT 1 FROM user_accounts a WHERE a.id = c.user_account_id AND a.user_id = c.user_id)"
    )
    assert orphans == 0


async def test_put_inside_a_scope_joins_its_transaction(user_with_account, owner) -> None:
    """Make sure a standalone put inside a scope of the same user rolls back with that scope."""
    with pytest.raises(RuntimeError, match="abandon"):
        async with user_scope(user_with_account):
            await put_credential(user_with_account, "alpaca", "AK-x", "SK-x")
            raise RuntimeError("abandon the scope")
    assert await _credentials(owner, user_with_account) == {}


async def test_put_without_account_is_typed(new_user, owner) -> None:
    """Make sure a standalone put for a user without an account raises AccountNotFound and writes nothing."""
    user_id = await new_user()
    with pytest.raises(AccountNotFound):
        await put_credential(user_id, "alpaca", "AK", "SK")
    assert await _credentials(owner, user_id) == {}


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[CountingProxy]:
    """The package's pool pointed through a counting proxy, then back."""
    parts = urlsplit(database_settings().url)
    counting = CountingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await counting.start()
    await close_pool()
    use_settings(database_url=counting.url_through(database_settings().url))
    forget_engine()
    await open_pool()
    try:
        yield counting
    finally:
        await close_pool()
        use_settings()
        forget_engine()
        await open_pool()
        await counting.close()


async def test_round_trips_counted_on_the_wire(proxy, user_with_account) -> None:
    """Make sure a standalone put takes two round trips, replacing or inserting, and a
    read one, counted by a proxy between the pool and PostgreSQL."""
    user_id = user_with_account
    # Warm up: the pool's connection, its RLS check and prepared statements.
    for credential_type in ("alpaca", "warmup"):
        await put_credential(user_id, credential_type, "AK-0", "SK-0")
        await get_credential(user_id, credential_type)
        async with user_scope(user_id) as scope:
            await scope.put_credential(credential_type, "AK-0", "SK-0")

    async def counted(operation) -> int:  # type: ignore[no-untyped-def]
        before = proxy.round_trips
        await operation
        return proxy.round_trips - before

    assert await counted(put_credential(user_id, "alpaca", "AK-1", "SK-1")) == 2  # replace
    assert await counted(put_credential(user_id, "polygon", "AK-2", "SK-2")) == 2  # first insert
    assert await counted(get_credential(user_id, "polygon")) == 1
    in_scope = user_scope(user_id)
    before = proxy.round_trips
    async with in_scope as scope:
        await scope.put_credential("alpaca", "AK-3", "SK-3")
    # BEGIN with the user setting, the locking lookup, the write, COMMIT.
    assert proxy.round_trips - before == 4


async def test_standalone_errors_are_typed(user_with_account) -> None:
    """Make sure bad input to a standalone put is a typed refusal, not a driver error."""
    from pydantic import ValidationError

    for bad in (("Not A Type", "AK", "SK"), ("alpaca", "   ", "SK"), ("alpaca", "AK", "")):
        with pytest.raises(ValidationError):
            await put_credential(user_with_account, *bad)
    with pytest.raises(ValueError):
        await put_credential("", "alpaca", "AK", "SK")


async def test_standalone_reads_say_why_nothing_is_usable(user_with_account, owner) -> None:
    """Make sure get_credential and list_credentials (standalone) return usable credentials
    and refuse missing, inactive and expired ones with their reason, as a scope does."""
    import datetime

    user_id = user_with_account
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    await put_credential(user_id, "alpaca", "AK-a", "SK-a")
    await put_credential(user_id, "polygon", "AK-p", "SK-p")
    await put_credential(user_id, "tradier", "AK-t", "SK-t", expires_at=soon)
    async with user_scope(user_id) as scope:
        await scope.deactivate_credential("polygon")
    await owner.execute(
        "UPDATE user_credentials SET expires_at = now() - interval '1 day' "
        "WHERE user_id = $1 AND credential_type = 'tradier'",
        user_id,
    )
    assert (await get_credential(user_id, "alpaca")).api_key.get_secret_value() == "AK-a"
    for credential_type, reason in (("polygon", "inactive"), ("tradier", "expired"), ("ibkr", "missing")):
        with pytest.raises(CredentialNotFound) as refused:
            await get_credential(user_id, credential_type)
        assert refused.value.reason == reason
    assert [c.credential_type for c in await list_credentials(user_id)] == ["alpaca"]
    everything = await list_credentials(user_id, include_inactive=True)
    assert [c.credential_type for c in everything] == ["alpaca", "polygon", "tradier"]


async def test_standalone_calls_join_the_scope_this_task_holds(user_with_account, new_user) -> None:
    """Make sure a standalone call inside a scope of the same user sees that scope's uncommitted
    writes, and one for another user while a scope is held is a ScopeError."""
    other = await new_user()
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", "AK-s", "SK-s")  # not committed yet
        seen = await get_credential(user_with_account, "alpaca")
        assert seen.api_key.get_secret_value() == "AK-s"
        with pytest.raises(ScopeError):
            await get_credential(other, "alpaca")
        with pytest.raises(ScopeError):
            await list_credentials(other)
        with pytest.raises(ScopeError):
            await put_credential(other, "alpaca", "AK", "SK")


async def test_standalone_read_refuses_a_role_that_bypasses_rls(test_db, user_with_account) -> None:
    """Make sure a standalone read on a connection that would bypass row-level security
    (the table owner, a superuser here) is refused before anything is read."""
    await close_pool()
    use_settings(database_url=test_db.owner_url)
    forget_engine()
    await open_pool()
    try:
        with pytest.raises(ScopeError, match="row-level security"):
            await get_credential(user_with_account, "alpaca")
        with pytest.raises(ScopeError, match="row-level security"):
            await list_credentials(user_with_account)
    finally:
        await close_pool()
        use_settings()
        forget_engine()
        await open_pool()


async def test_read_model_equals_the_validated_model(user_with_account) -> None:
    """Make sure the read model, built without validation, is exactly what pydantic
    validates from the same values (types, secrets hidden, fields set)."""
    from orchestrator_db import UserCredential

    stored = await put_credential(user_with_account, "alpaca", "AK-m", "SK-m")
    read = await get_credential(user_with_account, "alpaca")
    values = read.model_dump()
    values["api_key"], values["secret_key"] = "AK-m", "SK-m"
    validated = UserCredential.model_validate(values)
    assert read == validated and stored.id == read.id
    assert read.model_fields_set == validated.model_fields_set
    assert type(read.model_fields_set) is type(validated.model_fields_set)
    assert repr(read) == repr(validated) and "AK-m" not in repr(read)
    assert read.model_dump_json() == validated.model_dump_json()
    # Copies and assignment work as on any model (the fields set is the model's own).
    assert read.model_copy(update={"is_active": False}).is_active is False
    read.is_active = False
    assert read.is_active is False and validated.is_active is True


async def test_one_user_scope_cannot_be_entered_twice(user_with_account, owner) -> None:
    """Make sure a user_scope object entered a second time (nested, or after it ended) is
    refused with ScopeError, and the first scope still commits its own write."""
    scope_once = user_scope(user_with_account)
    async with scope_once as scope:
        await scope.put_credential("alpaca", "AK-1", "SK-1")
        with pytest.raises(ScopeError, match="already entered"):
            async with scope_once:
                pass
    with pytest.raises(ScopeError, match="already entered"):
        async with scope_once:
            pass
    assert list(await _credentials(owner, user_with_account)) == ["alpaca"]
