"""`check` on session lookup: does it say when authenticate() cannot work, and the fix?"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from better_auth_support import BetterAuth, BetterAuthConfig, new_secret
from helpers import grant_roles, run_piccolo

from orchestrator_db.devdb import provisioning
from orchestrator_db.devdb.urls import with_credentials

pytestmark = pytest.mark.asyncio(loop_scope="session")

FUNCTION = "public.orchestrator_db_session_user(text)"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def better_auth() -> AsyncIterator[BetterAuth]:
    driver = BetterAuth()
    await driver.start()
    yield driver
    await driver.close()


def _check(url: str, **env: str) -> tuple[int, str]:
    result = provisioning.run_piccolo(url, "orchestrator_db", "check", check=False, **env)
    return result.returncode, result.stdout + result.stderr


async def _deployment(migrated_database, test_db, better_auth: BetterAuth | None) -> str:
    """A scratch database: ours migrated, Better Auth's too if given, roles granted."""
    owner_url = await migrated_database(migrate=False)
    await asyncio.to_thread(run_piccolo, owner_url, "migrations", "forwards", "all")
    if better_auth is not None:
        await better_auth.migrate(BetterAuthConfig(owner_url, {"BETTER_AUTH_SECRET": new_secret()}))
    await asyncio.to_thread(grant_roles, test_db, owner_url)
    return owner_url


async def test_check_passes_when_session_lookup_can_work(
    better_auth, migrated_database, test_db
) -> None:
    """Make sure `check` reports every session finding ok, and exits 0, on a deployment
    with Better Auth's tables, our function, the grants and a secret."""
    owner_url = await _deployment(migrated_database, test_db, better_auth)
    app_url = with_credentials(owner_url, test_db.app_role, test_db.app_password)
    secret = new_secret()
    code, output = await asyncio.to_thread(_check, app_url, BETTER_AUTH_SECRET=secret)
    assert code == 0, output
    assert "[ok] Better Auth secret configured" in output
    assert '[ok] function owner' in output and 'can read "session" and "user"' in output
    assert f"[ok] role {test_db.app_role} may execute orchestrator_db_session_user" in output
    assert f'[ok] role {test_db.app_role} cannot read "session" directly' in output
    assert secret not in output


async def test_check_names_the_grant_when_the_owner_cannot_read_sessions(
    better_auth, migrated_database, test_db
) -> None:
    """Make sure that when the function's owner cannot read "session" (Better Auth's
    tables belong to another role), `check` fails naming the GRANT, lookup is refused,
    and running that GRANT fixes both."""
    owner_url = await _deployment(migrated_database, test_db, better_auth)
    app_url = with_credentials(owner_url, test_db.app_role, test_db.app_password)
    lookup_owner = f"odb_lookup_{secrets.token_hex(4)}"
    owner = await asyncpg.connect(owner_url)
    try:
        await owner.execute(f'CREATE ROLE "{lookup_owner}" NOLOGIN')
        await owner.execute(f'ALTER FUNCTION {FUNCTION} OWNER TO "{lookup_owner}"')
        code, output = await asyncio.to_thread(_check, app_url, BETTER_AUTH_SECRET=new_secret())
        assert code == 1, output
        grant = f'GRANT SELECT ON "session", "user" TO "{lookup_owner}"'
        assert f"[FAIL] function owner {lookup_owner} can read" in output
        assert grant in output
        app = await asyncpg.connect(app_url)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.fetch("SELECT * FROM orchestrator_db_session_user('x')")
            await owner.execute(grant)
            assert await app.fetch("SELECT * FROM orchestrator_db_session_user('x')") == []
        finally:
            await app.close()
        code, output = await asyncio.to_thread(_check, app_url, BETTER_AUTH_SECRET=new_secret())
        assert code == 0, output
    finally:
        await owner.execute(f"ALTER FUNCTION {FUNCTION} OWNER TO CURRENT_USER")
        await owner.execute(f'DROP OWNED BY "{lookup_owner}"')
        await owner.execute(f'DROP ROLE "{lookup_owner}"')
        await owner.close()


async def test_check_without_better_auth_tables(migrated_database, test_db) -> None:
    """Make sure `check` names Better Auth's migrations when "session" is missing: a
    failure with a secret set, a reported skip (exit 0) without one."""
    owner_url = await _deployment(migrated_database, test_db, None)
    app_url = with_credentials(owner_url, test_db.app_role, test_db.app_password)
    code, output = await asyncio.to_thread(_check, app_url)
    assert code == 0, output
    assert "[skip] Better Auth secret configured" in output
    assert '[skip] Better Auth tables "session" and "user" exist' in output
    assert "npx @better-auth/cli migrate" in output
    code, output = await asyncio.to_thread(_check, app_url, BETTER_AUTH_SECRET=new_secret())
    assert code == 1, output
    assert '[FAIL] Better Auth tables "session" and "user" exist' in output


@pytest.mark.parametrize(
    "env",
    [
        {"BETTER_AUTH_SECRET": "short-secret-1234"},
        {"BETTER_AUTH_SECRETS": "2:short-secret-5678, 1:" + "o" * 40},
    ],
    ids=["short", "short-current-of-several"],
)
async def test_check_fails_on_a_short_secret_without_echoing_it(test_db, env) -> None:
    """Make sure a short current secret fails `check`, naming the variable, never the value."""
    code, output = await asyncio.to_thread(_check, test_db.app_url, **env)
    assert code == 1, output
    assert "[FAIL] Better Auth secret configured" in output
    assert next(iter(env)) in output
    assert "short-secret" not in output and "o" * 40 not in output
