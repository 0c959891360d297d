"""Row-level security, probed directly: raw asyncpg as the application role.

These tests talk to the database the way any code holding the application
role's URL could, without the package's API in between, so they show what
the database itself allows. Setup and every "nothing changed" check go
through the owner; every probe runs as the application role.
"""

from __future__ import annotations

import ast
import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio
from helpers import grant_roles

import orchestrator_db
from orchestrator_db import user_scope
from orchestrator_db.devdb import with_database
from orchestrator_db.engine import get_engine, pool_options
from orchestrator_db.settings import CURRENT_USER_SETTING
from orchestrator_db.tables import TENANT_TABLES

if TYPE_CHECKING:
    from helpers import TestDatabase

PACKAGE_DIR = Path(orchestrator_db.__file__).resolve().parent
SETTING = CURRENT_USER_SETTING


# --- helpers ----------------------------------------------------------------


@dataclass
class Tenant:
    user_id: str
    account_id: uuid.UUID
    credential_id: uuid.UUID


async def _insert_tenant(owner: asyncpg.Pool, label: str) -> Tenant:
    user_id = f"rls-{label}-{uuid.uuid4()}"
    async with owner.acquire() as conn, conn.transaction():
        await conn.execute(
            'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true)',
            user_id,
            label,
            f"{user_id}@example.test",
        )
        account_id = await conn.fetchval(
            "INSERT INTO user_accounts (user_id, account_name) VALUES ($1, $2) RETURNING id",
            user_id,
            f"{label} account",
        )
        credential_id = await conn.fetchval(
            "INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)"
            " VALUES ($1, $2, 'alpaca', 'v1.k.api', 'v1.k.secret') RETURNING id",
            account_id,
            user_id,
        )
    return Tenant(user_id, account_id, credential_id)


@asynccontextmanager
async def _tenant(owner: asyncpg.Pool, label: str) -> AsyncIterator[Tenant]:
    """A user with an account and one credential, removed afterwards: the
    stand-in envelopes must not reach tests that decrypt every row."""
    tenant = await _insert_tenant(owner, label)
    try:
        yield tenant
    finally:  # cascades to the account and every credential
        await owner.execute('DELETE FROM "user" WHERE id = $1', tenant.user_id)


@pytest_asyncio.fixture
async def alice(owner: asyncpg.Pool) -> AsyncIterator[Tenant]:
    async with _tenant(owner, "alice") as tenant:
        yield tenant


@pytest_asyncio.fixture
async def bob(owner: asyncpg.Pool) -> AsyncIterator[Tenant]:
    async with _tenant(owner, "bob") as tenant:
        yield tenant


@pytest_asyncio.fixture
async def app_conn(test_db: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A fresh connection as the application role: no setting made yet."""
    conn = await asyncpg.connect(test_db.app_url)
    yield conn
    await conn.close()


@asynccontextmanager
async def scoped(
    conn: asyncpg.Connection, user_id: str | None
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction with the setting made transaction-locally (None: no setting)."""
    async with conn.transaction():
        if user_id is not None:
            await conn.execute(f"SELECT set_config('{SETTING}', $1, true)", user_id)
        yield conn


async def _snapshot(owner: asyncpg.Pool, table: str, row_id: uuid.UUID) -> dict | None:
    row = await owner.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id)
    return dict(row) if row is not None else None


async def _granted_scratch(test_db: TestDatabase, migrated_database) -> tuple[str, str]:
    """A fresh migrated database with the suite's roles granted there: (owner URL, app URL)."""
    owner_url = await migrated_database()
    await asyncio.to_thread(grant_roles, test_db, owner_url)
    name = urlsplit(owner_url).path.lstrip("/")
    return owner_url, with_database(test_db.app_url, name)


# --- SELECT -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_select_own_rows(app_conn, alice: Tenant, bob: Tenant, table: str) -> None:
    """Make sure a user with the setting made sees exactly their own rows."""
    async with scoped(app_conn, alice.user_id):
        rows = await app_conn.fetch(f"SELECT id, user_id FROM {table}")
    assert rows, "the owner's own rows must be visible"
    assert {row["user_id"] for row in rows} == {alice.user_id}
    expected = alice.account_id if table == "user_accounts" else alice.credential_id
    assert expected in {row["id"] for row in rows}


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_select_other_users_rows_denied(
    app_conn, alice: Tenant, bob: Tenant, table: str
) -> None:
    """Make sure asking for another user's rows by id returns nothing."""
    async with scoped(app_conn, alice.user_id):
        rows = await app_conn.fetch(f"SELECT * FROM {table} WHERE user_id = $1", bob.user_id)
    assert rows == []


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
@pytest.mark.parametrize("setting", [None, ""], ids=["no-setting", "empty-setting"])
async def test_select_without_user_sees_nothing(
    app_conn, owner, alice: Tenant, table: str, setting: str | None
) -> None:
    """Make sure no setting, or '', shows no rows at all (fail closed)."""
    assert await owner.fetchval(f"SELECT count(*) FROM {table}") > 0
    async with scoped(app_conn, setting):
        current = await app_conn.fetchval(f"SELECT current_setting('{SETTING}', true)")
        count = await app_conn.fetchval(f"SELECT count(*) FROM {table}")
    assert current == setting  # the probe really is in the state it claims
    assert count == 0


@pytest.mark.asyncio
async def test_setting_reverts_to_empty_after_a_scoped_transaction(app_conn, alice: Tenant) -> None:
    """Make sure the '' an ended transaction-local setting leaves behind shows nothing."""
    async with scoped(app_conn, alice.user_id):
        assert await app_conn.fetchval("SELECT count(*) FROM user_credentials") == 1
    assert await app_conn.fetchval(f"SELECT current_setting('{SETTING}', true)") == ""
    assert await app_conn.fetchval("SELECT count(*) FROM user_credentials") == 0
    assert await app_conn.fetchval("SELECT count(*) FROM user_accounts") == 0


# --- INSERT -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_insert_own_credential(app_conn, owner, alice: Tenant) -> None:
    """Make sure a user can add a credential to their own account."""
    async with scoped(app_conn, alice.user_id):
        new_id = await app_conn.fetchval(
            "INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)"
            " VALUES ($1, $2, 'polygon', 'v1.k.a', 'v1.k.s') RETURNING id",
            alice.account_id,
            alice.user_id,
        )
    stored = await _snapshot(owner, "user_credentials", new_id)
    assert stored is not None and stored["user_id"] == alice.user_id


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "setting", ["other-user", None, ""], ids=["other-user", "no-setting", "empty-setting"]
)
async def test_insert_credential_for_another_user_rejected(
    app_conn, owner, alice: Tenant, bob: Tenant, setting: str | None
) -> None:
    """Make sure a credential whose user_id is not the setting's user cannot be planted."""
    user = alice.user_id if setting == "other-user" else setting
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with scoped(app_conn, user):
            await app_conn.execute(
                "INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)"
                " VALUES ($1, $2, 'polygon', 'v1.k.a', 'v1.k.s')",
                bob.account_id,
                bob.user_id,
            )
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_id = $1", bob.user_id
        )
        == 1
    )


@pytest.mark.asyncio
async def test_insert_account_for_another_user_rejected(
    app_conn, owner, alice: Tenant, new_user
) -> None:
    """Make sure an account cannot be created under another user's id."""
    victim = await new_user()
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with scoped(app_conn, alice.user_id):
            await app_conn.execute(
                "INSERT INTO user_accounts (user_id, account_name) VALUES ($1, 'planted')", victim
            )
    assert (
        await owner.fetchval("SELECT count(*) FROM user_accounts WHERE user_id = $1", victim) == 0
    )


@pytest.mark.asyncio
async def test_attach_credential_to_another_users_account_rejected(
    app_conn, owner, alice: Tenant, bob: Tenant
) -> None:
    """Make sure a credential labelled with one's own id cannot hang off another user's account."""
    # RLS passes it (user_id is the setting's); the composite foreign key
    # pinning user_id to the account's owner refuses it.
    with pytest.raises(
        asyncpg.ForeignKeyViolationError, match="user_credentials_account_owner_fkey"
    ):
        async with scoped(app_conn, alice.user_id):
            await app_conn.execute(
                "INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)"
                " VALUES ($1, $2, 'polygon', 'v1.k.a', 'v1.k.s')",
                bob.account_id,
                alice.user_id,
            )
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_account_id = $1", bob.account_id
        )
        == 1
    )


# --- UPDATE -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_update_own_credential(app_conn, owner, alice: Tenant) -> None:
    """Make sure a user can change their own credential."""
    async with scoped(app_conn, alice.user_id):
        status = await app_conn.execute(
            "UPDATE user_credentials SET is_active = false WHERE id = $1", alice.credential_id
        )
    assert status == "UPDATE 1"
    assert (await _snapshot(owner, "user_credentials", alice.credential_id))["is_active"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
@pytest.mark.parametrize(
    "setting", ["other-user", None, ""], ids=["other-user", "no-setting", "empty-setting"]
)
async def test_update_other_users_rows_affects_nothing(
    app_conn, owner, alice: Tenant, bob: Tenant, table: str, setting: str | None
) -> None:
    """Make sure another user's rows cannot be changed, even without a WHERE clause."""
    user = alice.user_id if setting == "other-user" else setting
    row_id = bob.account_id if table == "user_accounts" else bob.credential_id
    before = await _snapshot(owner, table, row_id)
    async with scoped(app_conn, user):
        by_id = await app_conn.execute(
            f"UPDATE {table} SET is_active = false WHERE id = $1", row_id
        )
        everything = await app_conn.execute(
            f"UPDATE {table} SET is_active = false WHERE user_id <> $1", alice.user_id
        )
    assert (by_id, everything) == ("UPDATE 0", "UPDATE 0")
    assert await _snapshot(owner, table, row_id) == before


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "table, assignment",
    [
        ("user_credentials", "user_id = $2"),
        ("user_credentials", "user_id = $2, user_account_id = $3"),
        ("user_accounts", "user_id = $2"),
    ],
    ids=["credential-user-id", "credential-user-and-account", "account-user-id"],
)
async def test_update_cannot_move_a_row_to_another_user(
    app_conn, owner, alice: Tenant, bob: Tenant, table: str, assignment: str
) -> None:
    """Make sure an UPDATE cannot hand one's own row to another user."""
    row_id = alice.account_id if table == "user_accounts" else alice.credential_id
    before = await _snapshot(owner, table, row_id)
    args = [row_id, bob.user_id] + ([bob.account_id] if "$3" in assignment else [])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with scoped(app_conn, alice.user_id):
            await app_conn.execute(f"UPDATE {table} SET {assignment} WHERE id = $1", *args)
    assert await _snapshot(owner, table, row_id) == before


# --- DELETE -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delete_own_credential(app_conn, owner, alice: Tenant) -> None:
    """Make sure a user can delete their own credential."""
    async with scoped(app_conn, alice.user_id):
        status = await app_conn.execute(
            "DELETE FROM user_credentials WHERE id = $1", alice.credential_id
        )
    assert status == "DELETE 1"
    assert await _snapshot(owner, "user_credentials", alice.credential_id) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
@pytest.mark.parametrize(
    "setting", ["other-user", None, ""], ids=["other-user", "no-setting", "empty-setting"]
)
async def test_delete_other_users_rows_affects_nothing(
    app_conn, owner, alice: Tenant, bob: Tenant, table: str, setting: str | None
) -> None:
    """Make sure another user's rows cannot be deleted, even by a DELETE without WHERE."""
    user = alice.user_id if setting == "other-user" else setting
    row_id = bob.account_id if table == "user_accounts" else bob.credential_id
    async with scoped(app_conn, user):
        by_id = await app_conn.execute(f"DELETE FROM {table} WHERE id = $1", row_id)
        others = await app_conn.execute(f"DELETE FROM {table} WHERE user_id <> $1", alice.user_id)
    assert (by_id, others) == ("DELETE 0", "DELETE 0")
    assert await _snapshot(owner, table, row_id) is not None


# --- privileges -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_app_role_cannot_truncate(app_conn, owner, alice: Tenant, table: str) -> None:
    """Make sure TRUNCATE, which ignores row-level security, is not granted."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with scoped(app_conn, alice.user_id):
            await app_conn.execute(f"TRUNCATE {table}")
    assert await owner.fetchval(f"SELECT count(*) FROM {table}") > 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "statement",
    [
        'DELETE FROM "user" WHERE id = $1',
        "UPDATE \"user\" SET name = 'renamed' WHERE id = $1",
        "INSERT INTO \"user\" (id, name, email, \"emailVerified\") VALUES ($1 || '-x', 'x', $1 || '@x.test', true)",
        'TRUNCATE "user"',
    ],
    ids=["delete", "update", "insert", "truncate"],
)
async def test_app_role_cannot_write_user_table(
    app_conn, owner, alice: Tenant, statement: str
) -> None:
    """Make sure the application role cannot change Better Auth's "user" table."""
    before = await owner.fetchval('SELECT count(*) FROM "user"')
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        if "$1" in statement:
            await app_conn.execute(statement, alice.user_id)
        else:
            await app_conn.execute(statement)
    assert await owner.fetchval('SELECT count(*) FROM "user"') == before
    assert await owner.fetchval('SELECT name FROM "user" WHERE id = $1', alice.user_id) == "alice"


@pytest.mark.asyncio
async def test_app_role_can_read_user_table(app_conn, alice: Tenant) -> None:
    """Make sure the application role may read "user" (it checks users exist)."""
    name = await app_conn.fetchval('SELECT name FROM "user" WHERE id = $1', alice.user_id)
    assert name == "alice"


@pytest.mark.asyncio
async def test_app_role_is_neither_superuser_bypassrls_nor_owner(app_conn) -> None:
    """Make sure the role the tests run as is one RLS applies to."""
    row = await app_conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    owners = await app_conn.fetch(
        "SELECT relname FROM pg_class WHERE relname = ANY($1::text[])"
        " AND pg_has_role(current_user, relowner, 'MEMBER')",
        list(TENANT_TABLES),
    )
    assert (row["rolsuper"], row["rolbypassrls"], owners) == (False, False, [])


# --- pooled connections: session-level settings -------------------------------


@pytest.mark.asyncio
async def test_package_pool_would_carry_a_session_level_setting(test_db, alice: Tenant) -> None:
    """Make sure we know the danger: the package's pool keeps session state, so a
    session-level setting would hand one user's rows to the next borrower."""
    options = {**pool_options(), "min_size": 1, "max_size": 1}
    pool = await asyncpg.create_pool(test_db.app_url, **options)
    try:
        async with pool.acquire() as first:
            first_pid = await first.fetchval("SELECT pg_backend_pid()")
            await first.execute(f"SELECT set_config('{SETTING}', $1, false)", alice.user_id)
        async with pool.acquire() as second:  # another borrower, no setting of its own
            assert await second.fetchval("SELECT pg_backend_pid()") == first_pid
            leaked = await second.fetchval(f"SELECT current_setting('{SETTING}', true)")
            visible = await second.fetch("SELECT user_id FROM user_credentials")
    finally:
        await pool.close()
    assert leaked == alice.user_id
    assert [row["user_id"] for row in visible] == [alice.user_id]


@pytest.mark.asyncio
async def test_package_pool_does_not_carry_a_transaction_local_setting(
    test_db, alice: Tenant
) -> None:
    """Make sure a transaction-local setting is gone for the next borrower of the same connection."""
    options = {**pool_options(), "min_size": 1, "max_size": 1}
    pool = await asyncpg.create_pool(test_db.app_url, **options)
    try:
        async with pool.acquire() as first:
            first_pid = await first.fetchval("SELECT pg_backend_pid()")
            async with scoped(first, alice.user_id):
                assert await first.fetchval("SELECT count(*) FROM user_credentials") == 1
        async with pool.acquire() as second:
            assert await second.fetchval("SELECT pg_backend_pid()") == first_pid
            leaked = await second.fetchval(f"SELECT current_setting('{SETTING}', true)")
            visible = await second.fetchval("SELECT count(*) FROM user_credentials")
    finally:
        await pool.close()
    assert leaked in (None, "")
    assert visible == 0


def _rendered_strings(source: str) -> list[str]:
    """Every string literal in a Python source, f-string parts rendered as '?'.

    Implicitly concatenated literals form one node, so SQL split across
    several literals is seen whole.
    """
    tree = ast.parse(source)
    # Parts of an f-string are read as part of it; bare string statements
    # (docstrings) are prose, never sent to the database.
    skipped = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    } | {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Constant, ast.JoinedStr))
    }
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.JoinedStr):
            found.append(
                "".join(
                    part.value if isinstance(part, ast.Constant) else "?" for part in node.values
                )
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def _call_arguments(text: str, open_paren: int) -> list[str]:
    depth, start, arguments = 0, open_paren + 1, []
    quote = None
    for index in range(open_paren, len(text)):
        char = text[index]
        if quote:
            if char == quote:
                quote = None
            continue
        if char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                arguments.append(text[start:index].strip())
                return arguments
        elif char == "," and depth == 1:
            arguments.append(text[start:index].strip())
            start = index + 1
    return arguments + [text[start:].strip()]  # unterminated: report what is there


_SET_CONFIG = re.compile(r"set_config\s*\(", re.IGNORECASE)
# A SET statement (not SET LOCAL) at the start of a statement: UPDATE ... SET
# and a function's SET clause are not statements, and prose such as "set
# ADMIN_PASSWORD and run again" names no parameter assignment.
_SET_STATEMENT = re.compile(
    r"(?:^|;)\s*SET\s+(?!LOCAL\b)(?:SESSION\s+)?"
    r"(?:[\w.\"]+\s*(?:=|\bTO\b)|ROLE\b|TIME\s+ZONE\b|AUTHORIZATION\b)",
    re.IGNORECASE,
)
_PERSISTENT_SET = re.compile(r"ALTER\s+(?:ROLE|USER|DATABASE)\b[^;]*\bSET\s", re.IGNORECASE)


def session_level_settings(text: str) -> list[str]:
    """Every setting in ``text`` that would outlive its transaction."""
    problems = []
    for match in _SET_CONFIG.finditer(text):
        arguments = _call_arguments(text, match.end() - 1)
        if len(arguments) != 3 or arguments[2].lower() != "true":
            problems.append(text[match.start() : match.start() + 120])
    for pattern in (_SET_STATEMENT, _PERSISTENT_SET):
        problems += [match.group(0) for match in pattern.finditer(text)]
    return problems


def test_session_setting_scanner_catches_session_level_settings() -> None:
    """Make sure the source scan below can fail: it flags each session-level form."""
    bad = [
        "SELECT set_config('app.current_user_id', $1, false)",
        "SELECT pg_catalog.set_config('app.current_user_id', ?, is_local)",
        "SELECT set_config('app.current_user_id', $1)",
        "SET app.current_user_id = 'u1'",
        "BEGIN; SET SESSION app.current_user_id TO 'u1'",
        "ALTER ROLE app SET app.current_user_id = 'u1'",
        "set role odb_operator",
        'SET "app.current_user_id" TO DEFAULT',
    ]
    good = [
        "BEGIN; SELECT pg_catalog.set_config('app.current_user_id', E'it''s', true)",
        "SET LOCAL app.current_user_id = 'u1'",
        "UPDATE t SET a = 1",
        "Set credential secrets",
        "(shown once; set ADMIN_PASSWORD and run again to reset it)",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog AS $$ $$",
    ]
    assert [bool(session_level_settings(text)) for text in bad] == [True] * len(bad)
    assert [session_level_settings(text) for text in good] == [[]] * len(good)


def test_package_source_makes_only_transaction_local_settings() -> None:
    """Make sure every set_config/SET in the package and its migrations is transaction-local,
    the invariant that makes the pool's no-op reset safe."""
    sources = sorted(PACKAGE_DIR.rglob("*.py")) + sorted(PACKAGE_DIR.rglob("*.sql"))
    calls_seen: set[str] = set()
    problems: dict[str, list[str]] = {}
    for path in sources:
        text = path.read_text()
        strings = [text] if path.suffix == ".sql" else _rendered_strings(text)
        for string in strings:
            if _SET_CONFIG.search(string):
                calls_seen.add(path.relative_to(PACKAGE_DIR).as_posix())
            found = session_level_settings(string)
            if found:
                problems.setdefault(str(path), []).extend(found)
    assert problems == {}
    # The scan saw the settings it guards: the scope's and the scoped functions'.
    assert {"connection.py"} <= calls_seen
    assert any(name.startswith("piccolo_migrations/") for name in calls_seen)


@pytest.mark.asyncio
async def test_package_pool_is_clean_after_many_scopes(owner, new_user) -> None:
    """Make sure no connection in the package's pool carries a user after scopes end,
    whether they read, wrote, or failed."""
    users = [await new_user() for _ in range(6)]
    for user_id in users:
        async with user_scope(user_id) as scope:
            await scope.create_account("pool probe")

    async def use(index: int) -> None:
        user_id = users[index % len(users)]
        async with user_scope(user_id) as scope:
            await scope.list_credentials()  # a one-statement read
        try:
            async with user_scope(user_id) as scope:
                await scope.put_credential(f"t{index}", "api", "secret")
                await asyncio.sleep(0)
                if index % 3 == 0:
                    raise RuntimeError("roll this one back")
        except RuntimeError:
            pass

    await asyncio.gather(*(use(index) for index in range(40)))

    pool = get_engine().pool
    assert pool is not None, "the app_pool fixture opens the package pool"
    held = [await pool.acquire(timeout=10) for _ in range(pool.get_max_size())]
    try:
        states = [
            tuple(
                await conn.fetchrow(
                    f"SELECT current_setting('{SETTING}', true) AS setting,"
                    " (SELECT count(*) FROM user_credentials) AS visible"
                )
            )
            for conn in held
        ]
    finally:
        for conn in held:
            await pool.release(conn)
    assert len(states) == pool.get_max_size()
    assert all(setting in (None, "") and visible == 0 for setting, visible in states), states
    # The scopes did run: rolled back ones left nothing, committed ones stayed.
    committed = await owner.fetchval(
        "SELECT count(*) FROM user_credentials WHERE user_id = ANY($1::text[])", users
    )
    assert committed == len([index for index in range(40) if index % 3 != 0])


# --- the scoped lookup uses the index ------------------------------------------

BULK_USERS = 60_000  # two credentials each: 120k credential rows


@pytest_asyncio.fixture
async def large_database(test_db, migrated_database) -> tuple[str, str]:
    """A scratch database with >=100k credentials: (owner URL, app URL)."""
    owner_url, app_url = await _granted_scratch(test_db, migrated_database)
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute(f"""
            INSERT INTO "user" (id, name, email, "emailVerified")
                SELECT 'bulk-' || g, 'bulk', 'bulk-' || g || '@example.test', true
                FROM generate_series(1, {BULK_USERS}) AS g;
            INSERT INTO user_accounts (user_id, account_name)
                SELECT id, 'bulk account' FROM "user";
            INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)
                SELECT a.id, a.user_id, t.credential_type, 'v1.k.api', 'v1.k.secret'
                FROM user_accounts a
                CROSS JOIN (VALUES ('alpaca'), ('polygon')) AS t(credential_type);
            ANALYZE "user";
            ANALYZE user_accounts;
            ANALYZE user_credentials;
            """)
        assert await conn.fetchval("SELECT count(*) FROM user_credentials") >= 100_000
    finally:
        await conn.close()
    return owner_url, app_url


INDEXES = ("idx_user_credentials_user_id", "idx_user_credentials_unique")


async def _function_inner_query(conn: asyncpg.Connection, function: str) -> tuple[str, list[str]]:
    """The row-returning statement of a scoped function, with its parameters as $n."""
    row = await conn.fetchrow(
        "SELECT prosrc, proargnames FROM pg_proc WHERE proname = $1", function
    )
    statements = [part.strip() for part in row["prosrc"].split(";") if part.strip()]
    (query,) = [
        part.removeprefix("RETURN QUERY").strip()
        for part in statements
        if part.startswith("RETURN QUERY")
    ]
    for index, name in enumerate(row["proargnames"], start=1):
        query = re.sub(rf"\b{name}\b", f"${index}", query)
    return query, list(row["proargnames"])


@pytest.mark.asyncio
async def test_scoped_lookup_uses_the_user_id_index(large_database) -> None:
    """Make sure the scoped lookups, run as the application role on 120k rows,
    plan an index scan rather than reading the whole table."""
    _, app_url = large_database
    user_id = "bulk-31337"
    conn = await asyncpg.connect(app_url)
    try:
        single, single_args = await _function_inner_query(conn, "orchestrator_db_scoped_credential")
        listing, listing_args = await _function_inner_query(
            conn, "orchestrator_db_scoped_credentials"
        )
        assert (single_args, listing_args) == (["p_user_id", "p_credential_type"], ["p_user_id"])
        lookups = {
            "store lookup": (
                "SELECT * FROM user_credentials WHERE user_id = $1 AND credential_type = $2",
                (user_id, "alpaca"),
                1,
            ),
            "scoped_credential body": (single, (user_id, "alpaca"), 1),
            "scoped_credentials body": (listing, (user_id,), 2),
        }
        plans = {}
        async with scoped(conn, user_id):
            for label, (query, args, expected_rows) in lookups.items():
                rows = await conn.fetch(query, *args)
                assert [row["user_id"] for row in rows] == [user_id] * expected_rows, label
                plan = await conn.fetch(f"EXPLAIN {query}", *args)
                plans[label] = "\n".join(line[0] for line in plan)
    finally:
        await conn.close()
    for label, plan in plans.items():
        assert any(index in plan for index in INDEXES), f"{label}:\n{plan}"
        assert "Seq Scan on user_credentials" not in plan, f"{label}:\n{plan}"
