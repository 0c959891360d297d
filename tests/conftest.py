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
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from orchestrator_db.crypto import generate_key_entry
from orchestrator_db.local_postgres import (
    DatabaseUnavailable,
    create_database,
    drop_database,
    resolve_server_url,
    with_credentials,
)

ROOT = Path(__file__).resolve().parent.parent
PICCOLO = str(Path(sys.executable).with_name("piccolo"))
#: `make soak` sets this: the reliability and fuzz tests run this many times longer.
SOAK_FACTOR = max(1, int(os.environ.get("ORCHESTRATOR_DB_SOAK_FACTOR", "1") or 1))


@dataclass
class TestDatabase:
    server_url: str  # superuser, maintenance database
    name: str
    owner_url: str  # migrations run as this role, which owns the tables
    app_role: str
    app_password: str
    app_url: str  # NOSUPERUSER NOBYPASSRLS, not owner: RLS applies
    operator_role: str
    operator_password: str
    operator_url: str  # BYPASSRLS
    keys: str  # the ORCHESTRATOR_DB_KEYS the run uses


DB: TestDatabase | None = None


def run_piccolo(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `piccolo` CLI, as a user would, against one database."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [PICCOLO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"piccolo {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def grant_roles(db: TestDatabase, owner_url: str) -> None:
    """Provision the suite's two roles in a database, with the real `create_roles`."""
    run_piccolo(
        owner_url,
        "orchestrator_db",
        "create_roles",
        f"--app_role={db.app_role}",
        f"--operator_role={db.operator_role}",
        f"--app_password={db.app_password}",
        f"--operator_password={db.operator_password}",
    )


def pytest_configure(config: pytest.Config) -> None:
    global DB
    try:
        server_url = resolve_server_url(os.environ.get("DATABASE_URL"))
    except DatabaseUnavailable as error:
        raise pytest.UsageError(f"no PostgreSQL for the test suite: {error}") from None
    suffix = secrets.token_hex(4)
    name = f"odb_test_{suffix}"
    owner_url = asyncio.run(create_database(server_url, name))
    app_role, operator_role = f"odb_app_{suffix}", f"odb_operator_{suffix}"
    app_password, operator_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    DB = TestDatabase(
        server_url=server_url,
        name=name,
        owner_url=owner_url,
        app_role=app_role,
        app_password=app_password,
        app_url=with_credentials(owner_url, app_role, app_password),
        operator_role=operator_role,
        operator_password=operator_password,
        operator_url=with_credentials(owner_url, operator_role, operator_password),
        keys=f"{generate_key_entry('test2')},{generate_key_entry('test1')}",
    )
    run_piccolo(owner_url, "migrations", "forwards", "all")
    grant_roles(DB, owner_url)
    os.environ["DATABASE_URL"] = DB.app_url
    os.environ["ORCHESTRATOR_DB_KEYS"] = DB.keys
    os.environ.pop("ORCHESTRATOR_DB_KEYS_FILE", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if DB is None:
        return

    async def cleanup() -> None:
        await drop_database(DB.server_url, DB.name)
        connection = await asyncpg.connect(DB.server_url)
        try:
            for role in (DB.app_role, DB.operator_role):
                await connection.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await connection.close()

    asyncio.run(cleanup())


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
