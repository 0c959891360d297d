"""Real PostgreSQL for every test, and never a skip.

At start-up: find a server (DATABASE_URL, else the embedded cluster), make a
throwaway database, migrate it as the owner, provision the application and
operator roles, and point DATABASE_URL at the application role, so every
test of the public API runs under row-level security. Everything is dropped
at the end. If no server can be had the run fails with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import fields

import asyncpg
import pytest
import pytest_asyncio
from better_auth_support import BetterAuth, BetterAuthConfig, new_secret
from helpers import TestDatabase, run_piccolo

from orchestrator_db.crypto.keyring import generate_key_entry
from orchestrator_db.devdb import (
    DatabaseUnavailable,
    create_database,
    drop_database,
    provisioning,
    resolve_server_url,
)
from orchestrator_db.devdb.provisioning import ProvisionedDatabase
from orchestrator_db.settings import (
    configured_database_url,
    reload_settings,
    settings_override,
    use_settings,
)

DB: TestDatabase | None = None


def pytest_configure(config: pytest.Config) -> None:
    global DB
    try:
        server_url = resolve_server_url(configured_database_url())
    except DatabaseUnavailable as error:
        raise pytest.UsageError(f"no PostgreSQL for the test suite: {error}") from None
    provisioned = asyncio.run(provisioning.provision_database(server_url, "odb_test"))
    DB = TestDatabase(
        **{f.name: getattr(provisioned, f.name) for f in fields(ProvisionedDatabase)},
        keys=f"{generate_key_entry('test2')},{generate_key_entry('test1')}",
    )
    os.environ["DATABASE_URL"] = DB.app_url
    os.environ["ORCHESTRATOR_DB_KEYS"] = DB.keys
    os.environ.pop("ORCHESTRATOR_DB_KEYS_FILE", None)
    reload_settings()


def pytest_unconfigure(config: pytest.Config) -> None:
    if DB is not None:
        asyncio.run(provisioning.drop_provisioned_database(DB))


@pytest.fixture(autouse=True)
def environment_read_afresh() -> Iterator[None]:
    """Settings are read once per process; a test that changes the environment or
    calls use_settings sees its change, and the next test does not."""
    saved = settings_override()
    reload_settings()
    yield
    if saved is None:
        use_settings()
    else:
        use_settings(saved)


@pytest.fixture(scope="session")
def test_db() -> TestDatabase:
    assert DB is not None
    return DB


@pytest_asyncio.fixture(scope="session", autouse=True)
async def app_pool() -> AsyncIterator[None]:
    """The package's own pool, as an app would open it, for the whole run."""
    from orchestrator_db import close_pool, open_pool

    await open_pool()
    yield
    await close_pool()


@pytest_asyncio.fixture(scope="session")
async def owner(test_db: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    """The table owner (a superuser here): for setup and catalog reads only."""
    pool = await asyncpg.create_pool(test_db.owner_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


NewUser = Callable[..., Awaitable[str]]


@pytest.fixture
def new_user(owner: asyncpg.Pool) -> NewUser:
    """Insert a Better Auth user (as Better Auth would) and return its id."""

    async def make(user_id: str | None = None) -> str:
        user_id = user_id or f"user-{uuid.uuid4()}"
        await owner.execute(
            'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true)',
            user_id,
            "Test User",
            f"{user_id}@example.test",
        )
        return user_id

    return make


@pytest_asyncio.fixture
async def user_with_account(new_user: NewUser) -> str:
    """A user who already has a trading account."""
    from orchestrator_db import user_scope

    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper Account")
    return user_id


@pytest_asyncio.fixture
async def migrated_database(test_db: TestDatabase) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Fresh, fully migrated databases for tests that must break or rebuild one."""
    made: list[str] = []

    async def make(migrate: bool = True) -> str:
        name = f"odb_scratch_{secrets.token_hex(4)}"
        made.append(name)
        url = await create_database(test_db.server_url, name)
        if migrate:
            await asyncio.to_thread(run_piccolo, url, "migrations", "forwards", "all")
        return url

    yield make
    for name in made:
        await drop_database(test_db.server_url, name)


# Better Auth (tests/better_auth/, the real package from npm) #################
# Shared by the session, web-integration and example-app tests.


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def better_auth(test_db) -> AsyncIterator[BetterAuth]:
    """The Node driver, with Better Auth's tables made by its own migration.

    Our migrations ran first (the suite provisions the database), so this is
    the "ours first" order: "session" is created after our lookup function.
    """
    driver = BetterAuth()
    await driver.start()
    await driver.migrate(BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": new_secret()}))
    yield driver
    await driver.close()


@pytest.fixture
def secret() -> Iterator[str]:
    """A fresh secret, set for Python (through settings) and for the Better Auth config."""
    value = new_secret()
    use_settings(better_auth_secret=value)
    yield value


@pytest.fixture
def config(test_db, secret: str) -> BetterAuthConfig:
    """Better Auth's configuration for the test database, signing with ``secret``."""
    return BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": secret})
