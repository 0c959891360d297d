"""The migration sequence, run through the real `piccolo` CLI on scratch databases.

Each test compares catalog snapshots (tables, columns, constraints, indexes,
triggers, functions, policies and comments of the public schema) taken
before and after a step, so "changes nothing" and "leaves it untouched" are
checked object by object.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from helpers import PICCOLO, ROOT, run_piccolo

if TYPE_CHECKING:
    from helpers import TestDatabase

MIGRATIONS_FOLDER = ROOT / "orchestrator_db" / "piccolo_migrations"
BETTER_AUTH_DDL = Path("/work/shared/context/better_auth_1.7.25_pg.sql")
APP = "orchestrator_db"
BACKWARDS_ALL = ("migrations", "backwards", APP, "--migration_id=all", "--auto_agree")
FORWARDS_ALL = ("migrations", "forwards", "all")

WHICH_MIGRATIONS_FOLDER = (
    "import os, sys; sys.path.insert(0, os.getcwd()); "
    "from orchestrator_db.piccolo_app import APP_CONFIG; "
    "print(APP_CONFIG.resolved_migrations_folder_path)"
)

OUR_TABLES = {"user_accounts", "user_credentials"}
OUR_INDEXES = {
    "idx_user_accounts_user_id",
    "idx_user_credentials_user_id",
    "idx_user_credentials_account_id",
    "idx_user_credentials_unique",
}
OUR_TRIGGERS = {"user_accounts_touch_updated_at", "user_credentials_touch_updated_at"}
OUR_FUNCTIONS = {
    "orchestrator_db_touch_updated_at",
    "orchestrator_db_scoped_account",
    "orchestrator_db_scoped_credential",
    "orchestrator_db_scoped_credentials",
}

SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
               obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'""",
    "policies": """
        SELECT tablename, policyname, cmd, roles::text[], qual, with_check
        FROM pg_policies WHERE schemaname = 'public'""",
}


async def snapshot(url: str, table: str | None = None) -> dict[str, list[tuple]]:
    """Every schema object of the public schema (or of one table), without oids."""
    connection = await asyncpg.connect(url)
    try:
        result = {}
        for kind, sql in SNAPSHOT_QUERIES.items():
            rows = sorted(tuple(row) for row in await connection.fetch(sql))
            if table is not None:
                rows = [row for row in rows if row[0] == table]
            result[kind] = rows
        return result
    finally:
        await connection.close()


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def applied_migrations(url: str) -> list[str]:
    rows = await fetch(
        url,
        "SELECT name FROM migration WHERE app_name = $1 ORDER BY name",
        APP,
    )
    return [row["name"] for row in rows]


async def piccolo(url: str, *args: str) -> str:
    result = await asyncio.to_thread(run_piccolo, url, *args)
    return result.stdout


def names(rows: list[tuple], position: int = 1) -> set[str]:
    return {row[position] for row in rows}


def other_apps() -> list[str]:
    """The registered Piccolo apps other than ours, in registry order."""
    registry = runpy.run_path(str(ROOT / "piccolo_conf.py"))["APP_REGISTRY"]
    return [name for name in registry.app_configs if name != APP]


def migration_ids() -> list[str]:
    ids = []
    for path in sorted(MIGRATIONS_FOLDER.glob(f"{APP}_*.py")):
        for line in path.read_text().splitlines():
            if line.startswith("ID = "):
                ids.append(line.split("=", 1)[1].strip().strip("\"'"))
    return ids


async def create_better_auth_schema(url: str) -> None:
    """Run Better Auth 1.7's own DDL, all of it, as Better Auth would on first start."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(BETTER_AUTH_DDL.read_text())
    finally:
        await connection.close()


async def add_user(url: str, user_id: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true)',
            user_id,
            "Ada",
            f"{user_id}@example.test",
        )
    finally:
        await connection.close()


async def user_rows(url: str) -> list[tuple]:
    return [tuple(row) for row in await fetch(url, 'SELECT * FROM "user" ORDER BY id')]


# Section 3, step by step ####################################################


@pytest.mark.asyncio
async def test_forwards_builds_everything_on_empty_database(migrated_database) -> None:
    """Make sure `piccolo migrations forwards all` builds every table, index, trigger, function and policy from nothing."""
    url = await migrated_database(migrate=False)
    empty = await snapshot(url)
    assert names(empty["relations"], 0) & (OUR_TABLES | {"user"}) == set()

    await piccolo(url, *FORWARDS_ALL)

    built = await snapshot(url)
    relations = {row[0]: row for row in built["relations"]}
    assert OUR_TABLES | {"user"} <= set(relations)
    for table in OUR_TABLES:
        _, kind, row_security, forced, comment = relations[table]
        assert (kind, row_security, forced) == ("r", True, True)
        assert comment
    assert OUR_INDEXES <= names(built["indexes"])
    assert OUR_TRIGGERS <= names(built["triggers"])
    assert OUR_FUNCTIONS <= names(built["functions"], 0)
    assert OUR_TABLES <= names(built["policies"], 0)
    assert await applied_migrations(url) == sorted(migration_ids())
    assert len(migration_ids()) >= 4


@pytest.mark.asyncio
async def test_forwards_again_changes_nothing(migrated_database) -> None:
    """Make sure a second `forwards all` succeeds, runs nothing and leaves the catalog identical."""
    url = await migrated_database()
    before, applied_before = await snapshot(url), await applied_migrations(url)

    output = await piccolo(url, *FORWARDS_ALL)

    assert "No migrations need to be run" in output
    assert await snapshot(url) == before
    assert await applied_migrations(url) == applied_before


@pytest.mark.asyncio
async def test_backwards_to_zero_then_forwards_again(migrated_database) -> None:
    """Make sure going back to zero removes everything we made (the empty "user" too) and forwards rebuilds it identically."""
    url = await migrated_database()
    built = await snapshot(url)

    await piccolo(url, *BACKWARDS_ALL)

    # What is left is exactly what the other registered apps build on their own.
    reference = await migrated_database(migrate=False)
    for app in other_apps():
        await piccolo(reference, "migrations", "forwards", app)
    emptied = await snapshot(url)
    assert emptied == await snapshot(reference)
    assert names(emptied["relations"], 0) & (OUR_TABLES | {"user"}) == set()
    assert names(emptied["functions"], 0) & OUR_FUNCTIONS == set()
    assert await applied_migrations(url) == []

    await piccolo(url, *FORWARDS_ALL)

    assert await snapshot(url) == built
    assert await applied_migrations(url) == sorted(migration_ids())


def _project_copy(destination: Path) -> Path:
    """The project's Piccolo entry point and app, copied so `migrations new` never writes into the real tree."""
    shutil.copy2(ROOT / "piccolo_conf.py", destination / "piccolo_conf.py")
    shutil.copytree(
        ROOT / APP, destination / APP, ignore=shutil.ignore_patterns("__pycache__")
    )
    return destination / APP / "piccolo_migrations"


@pytest.mark.asyncio
async def test_auto_migration_finds_no_changes(test_db: TestDatabase, tmp_path: Path) -> None:
    """Make sure `piccolo migrations new orchestrator_db --auto` finds tables.py and the migrations in agreement."""
    copied_migrations = _project_copy(tmp_path)
    env = {**os.environ, "DATABASE_URL": test_db.owner_url}
    # Piccolo puts its working directory first on sys.path, so the copy is what it loads.
    where = subprocess.run(
        [sys.executable, "-c", WHICH_MIGRATIONS_FOLDER],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()) == copied_migrations
    files_before = sorted(copied_migrations.iterdir())

    result = await asyncio.to_thread(
        subprocess.run,
        [PICCOLO, "migrations", "new", APP, "--auto"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout
    assert sorted(copied_migrations.iterdir()) == files_before


# Better Auth's "user" table #################################################


@pytest.mark.asyncio
async def test_migrations_adopt_user_table_better_auth_created(migrated_database) -> None:
    """Make sure migrating a database where Better Auth made "user" first succeeds and leaves "user", its row and its siblings untouched."""
    url = await migrated_database(migrate=False)
    await create_better_auth_schema(url)
    await add_user(url, "ba-user-1")
    user_before = await snapshot(url, "user")
    rows_before = await user_rows(url)
    better_auth_tables = {"user", "session", "account", "verification"}
    others_before = {
        kind: [row for row in rows if row[0] in better_auth_tables - {"user"}]
        for kind, rows in (await snapshot(url)).items()
    }

    await piccolo(url, *FORWARDS_ALL)

    assert await snapshot(url, "user") == user_before
    comment = await fetch(url, "SELECT obj_description('\"user\"'::regclass, 'pg_class') AS c")
    assert comment[0]["c"] is None
    assert await user_rows(url) == rows_before
    after = await snapshot(url)
    assert {
        kind: [row for row in rows if row[0] in better_auth_tables - {"user"}]
        for kind, rows in after.items()
    } == others_before
    assert OUR_TABLES <= names(after["relations"], 0)
    # Our accounts hang off Better Auth's table.
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO user_accounts (user_id, account_name) VALUES ('ba-user-1', 'Paper Account')"
        )
        assert await connection.fetchval(
            "SELECT count(*) FROM user_accounts WHERE user_id = 'ba-user-1'"
        ) == 1
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_backwards_keeps_better_auth_populated_user_table(migrated_database) -> None:
    """Make sure going back to zero drops our tables but never Better Auth's "user" table or its rows."""
    url = await migrated_database(migrate=False)
    await create_better_auth_schema(url)
    await add_user(url, "ba-user-1")
    user_before = await snapshot(url, "user")
    rows_before = await user_rows(url)
    await piccolo(url, *FORWARDS_ALL)

    await piccolo(url, *BACKWARDS_ALL)

    after = await snapshot(url)
    assert names(after["relations"], 0) & OUR_TABLES == set()
    assert {"user", "session", "account", "verification"} <= names(after["relations"], 0)
    assert await snapshot(url, "user") == user_before
    assert await user_rows(url) == rows_before


@pytest.mark.asyncio
async def test_backwards_keeps_empty_user_table_better_auth_created(migrated_database) -> None:
    """Make sure going back to zero keeps a "user" table Better Auth created, even while it has no rows."""
    url = await migrated_database(migrate=False)
    await create_better_auth_schema(url)
    user_before = await snapshot(url, "user")
    await piccolo(url, *FORWARDS_ALL)

    await piccolo(url, *BACKWARDS_ALL)

    assert await snapshot(url, "user") == user_before


@pytest.mark.asyncio
async def test_backwards_keeps_user_table_once_better_auth_has_users(migrated_database) -> None:
    """Make sure the "user" table we created is kept on the way back once Better Auth has stored users in it."""
    url = await migrated_database()
    await add_user(url, "adopted-1")
    rows_before = await user_rows(url)

    await piccolo(url, *BACKWARDS_ALL)

    relations = names((await snapshot(url))["relations"], 0)
    assert "user" in relations
    assert relations & OUR_TABLES == set()
    assert await user_rows(url) == rows_before


@pytest.mark.asyncio
async def test_backwards_keeps_user_table_better_auth_tables_reference(migrated_database) -> None:
    """Make sure going back to zero succeeds and keeps the empty "user" we created once Better
    Auth's own migration has added "session" and "account", which reference it."""
    url = await migrated_database()
    statements = [s for s in BETTER_AUTH_DDL.read_text().split(";") if s.strip()]
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            if not statement.strip().startswith('create table "user"'):  # ours is there already
                await connection.execute(statement)
    finally:
        await connection.close()
    better_auth_before = {table: await snapshot(url, table) for table in ("user", "session", "account")}

    await piccolo(url, *BACKWARDS_ALL)

    relations = names((await snapshot(url))["relations"], 0)
    assert relations & OUR_TABLES == set()
    for table, before in better_auth_before.items():
        assert await snapshot(url, table) == before
    await piccolo(url, *FORWARDS_ALL)  # and the way forward is open again
    assert OUR_TABLES <= names((await snapshot(url))["relations"], 0)


@pytest.mark.asyncio
async def test_fresh_user_table_has_better_auth_shape(migrated_database) -> None:
    """Make sure the "user" table our migration creates is identical, object for object, to the one Better Auth's DDL creates."""
    ours = await migrated_database()
    theirs = await migrated_database(migrate=False)
    await create_better_auth_schema(theirs)

    our_shape = await snapshot(ours, "user")
    their_shape = await snapshot(theirs, "user")
    # Only the table comment differs: ours marks the table as created on Better Auth's behalf.
    for shape in (our_shape, their_shape):
        shape["relations"] = [row[:4] for row in shape["relations"]]
    assert our_shape == their_shape
    assert our_shape["columns"]  # the table really is there
