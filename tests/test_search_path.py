"""Names that cannot be hijacked: temp objects, earlier schemas, unpinned functions.

App code can create objects on a pooled connection, and a role's
search_path can put another schema first. Neither may change what a scope
reads or writes, and `check` must fail on a function of ours whose body
would resolve names through the caller's search_path (CVE-2018-1058).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from helpers import run_piccolo

from orchestrator_db import user_scope
from orchestrator_db.checks import PINNED_SEARCH_PATH, failures, inspect_functions
from orchestrator_db.engine import get_engine

pytestmark = pytest.mark.asyncio

API_KEY = "AKIA-real-api-3e9d"
SECRET_KEY = "sk-real-secret-b1f0"


@asynccontextmanager
async def on_every_pooled_connection(
    setup: Callable[[Any], Awaitable[None]], teardown: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[None]:
    """Run ``setup`` on every connection of the package's pool (as app code could), then ``teardown``."""
    pool = get_engine().pool
    assert pool is not None
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        for connection in held:
            await setup(connection)
    finally:
        for connection in held:
            await pool.release(connection)
    try:
        yield
    finally:
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        try:
            for connection in held:
                await teardown(connection)
        finally:
            for connection in held:
                await pool.release(connection)


async def _exercise(user_id: str, owner: asyncpg.Pool) -> None:
    """Write, read one, read all, in fresh scopes; the real table must hold what was written."""
    async with user_scope(user_id) as scope:
        await scope.put_credential("alpaca", API_KEY, SECRET_KEY)
    async with user_scope(user_id) as scope:  # one-shot reads (scoped functions)
        one = await scope.get_credential("alpaca")
        listed = await scope.list_credentials()
        account = await scope.get_account()
    async with user_scope(user_id) as scope:  # reads inside a transaction
        await scope.put_credential("polygon", "p-api", "p-secret")
        in_tx = await scope.get_credential("alpaca")
    assert one.api_key.get_secret_value() == API_KEY
    assert in_tx.secret_key.get_secret_value() == SECRET_KEY
    assert [c.credential_type for c in listed] == ["alpaca"]
    real = await owner.fetch(
        "SELECT credential_type, user_account_id FROM public.user_credentials "
        "WHERE user_id = $1 ORDER BY 1",
        user_id,
    )
    assert [r["credential_type"] for r in real] == ["alpaca", "polygon"]
    assert {r["user_account_id"] for r in real} == {account.id}


async def test_temp_objects_named_like_ours_change_nothing(user_with_account, owner):
    """Make sure temp tables and functions named like ours, on every pooled connection, do not change what scopes read or write."""
    decoy_account = uuid.uuid4()

    async def setup(connection: Any) -> None:
        await connection.execute(
            "CREATE TEMP TABLE user_accounts (LIKE public.user_accounts INCLUDING DEFAULTS)"
        )
        await connection.execute(
            "CREATE TEMP TABLE user_credentials (LIKE public.user_credentials INCLUDING DEFAULTS)"
        )
        await connection.execute(
            "INSERT INTO pg_temp.user_accounts (id, user_id, account_name) VALUES ($1, $2, 'decoy')",
            decoy_account,
            user_with_account,
        )
        await connection.execute(
            "CREATE FUNCTION pg_temp.orchestrator_db_scoped_credential(p text, q text) "
            "RETURNS SETOF public.user_credentials LANGUAGE sql AS "
            "'SELECT * FROM pg_temp.user_credentials'"
        )

    async def teardown(connection: Any) -> None:
        await connection.execute("DISCARD TEMP")

    async with on_every_pooled_connection(setup, teardown):
        await _exercise(user_with_account, owner)


async def test_an_earlier_schema_on_the_search_path_changes_nothing(user_with_account, owner):
    """Make sure tables and functions in a schema before public on the search_path do not change what scopes read or write."""
    schema = f"evil_{uuid.uuid4().hex[:8]}"
    await owner.execute(f"CREATE SCHEMA {schema}")
    try:
        await owner.execute(
            f"CREATE TABLE {schema}.user_accounts (LIKE public.user_accounts INCLUDING DEFAULTS)"
        )
        await owner.execute(
            f"CREATE TABLE {schema}.user_credentials (LIKE public.user_credentials INCLUDING DEFAULTS)"
        )
        for signature, table in (
            ("orchestrator_db_scoped_account(p text)", "user_accounts"),
            ("orchestrator_db_scoped_credential(p text, q text)", "user_credentials"),
            ("orchestrator_db_scoped_credentials(p text)", "user_credentials"),
        ):
            await owner.execute(
                f"CREATE FUNCTION {schema}.{signature} RETURNS SETOF public.{table} "
                f"LANGUAGE sql AS 'SELECT * FROM {schema}.{table}'"
            )
        await owner.execute(
            f"CREATE FUNCTION {schema}.orchestrator_db_credential_slot(p text, q text) "
            "RETURNS TABLE (account_id uuid, credential_id uuid) LANGUAGE sql "
            "AS 'SELECT gen_random_uuid(), NULL::uuid'"
        )
        await owner.execute(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
        await owner.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO PUBLIC")

        async def setup(connection: Any) -> None:
            await connection.execute(f"SET search_path = {schema}, public")

        async def teardown(connection: Any) -> None:
            await connection.execute("RESET search_path")

        async with on_every_pooled_connection(setup, teardown):
            await _exercise(user_with_account, owner)
        assert await owner.fetchval(f"SELECT count(*) FROM {schema}.user_credentials") == 0
    finally:
        await owner.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_every_function_of_ours_pins_its_search_path(owner):
    """Make sure every orchestrator_db_* function the migrations create sets search_path = pg_catalog, pg_temp."""
    async with owner.acquire() as connection:
        findings = await inspect_functions(connection)
    names = {finding.check.split("(")[0] for finding in findings}
    assert "function public.orchestrator_db_credential_slot" in names
    assert "function public.orchestrator_db_scoped_credential" in names
    assert "function public.orchestrator_db_touch_updated_at" in names
    assert failures(findings) == []
    assert PINNED_SEARCH_PATH == ("pg_catalog", "pg_temp")


async def test_check_fails_on_an_unpinned_function(owner, test_db):
    """Make sure `check` exits non-zero naming a function of ours whose search_path is not pinned."""
    name = f"orchestrator_db_unpinned_{uuid.uuid4().hex[:6]}"
    await owner.execute(
        f"CREATE FUNCTION public.{name}() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    )
    try:
        async with owner.acquire() as connection:
            [finding] = [f for f in await inspect_functions(connection) if name in f.check]
        assert not finding.ok and "SET search_path = pg_catalog, pg_temp" in finding.fix
        result = run_piccolo(test_db.app_url, "orchestrator_db", "check", check=False)
        assert result.returncode != 0
        assert f"[FAIL] function public.{name}(): search_path pinned" in result.stdout
    finally:
        await owner.execute(f"DROP FUNCTION public.{name}()")
    clean = run_piccolo(test_db.app_url, "orchestrator_db", "check", check=False)
    assert "search_path pinned" in clean.stdout and "[FAIL] function" not in clean.stdout
