"""The schema, read back from the PostgreSQL catalog, and the rules it enforces.

Catalog facts come from information_schema and pg_catalog of the migrated
test database. Behaviour is exercised with raw SQL as the owner (a superuser,
so row-level security does not apply): these tests guard what the database
itself guarantees, whatever client writes to it.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

TIMESTAMP_DEFAULTS = {"CURRENT_TIMESTAMP", "now()"}
UUID_DEFAULT = {"gen_random_uuid()"}
TRUE_DEFAULT = {"true"}
NO_DEFAULT = {None}

# column -> (data_type, character_maximum_length, is_nullable, allowed defaults)
USER_ACCOUNTS_COLUMNS = {
    "id": ("uuid", None, "NO", UUID_DEFAULT),
    "user_id": ("text", None, "NO", NO_DEFAULT),
    "account_name": ("character varying", 255, "NO", NO_DEFAULT),
    "is_active": ("boolean", None, "NO", TRUE_DEFAULT),
    "created_at": ("timestamp with time zone", None, "NO", TIMESTAMP_DEFAULTS),
    "updated_at": ("timestamp with time zone", None, "NO", TIMESTAMP_DEFAULTS),
}
USER_CREDENTIALS_COLUMNS = {
    "id": ("uuid", None, "NO", UUID_DEFAULT),
    "user_account_id": ("uuid", None, "NO", NO_DEFAULT),
    "user_id": ("text", None, "NO", NO_DEFAULT),
    "credential_type": ("character varying", 50, "NO", NO_DEFAULT),
    "api_key": ("text", None, "NO", NO_DEFAULT),
    "secret_key": ("text", None, "NO", NO_DEFAULT),
    "is_active": ("boolean", None, "NO", TRUE_DEFAULT),
    "expires_at": ("timestamp with time zone", None, "YES", NO_DEFAULT),
    "created_at": ("timestamp with time zone", None, "NO", TIMESTAMP_DEFAULTS),
    "updated_at": ("timestamp with time zone", None, "NO", TIMESTAMP_DEFAULTS),
}
# Better Auth 1.7's DDL for "user", column by column, in order.
BETTER_AUTH_USER_COLUMNS = [
    ("id", "text", "NO", None),
    ("name", "text", "NO", None),
    ("email", "text", "NO", None),
    ("emailVerified", "boolean", "NO", None),
    ("image", "text", "YES", None),
    ("createdAt", "timestamp with time zone", "NO", "CURRENT_TIMESTAMP"),
    ("updatedAt", "timestamp with time zone", "NO", "CURRENT_TIMESTAMP"),
]

# (table, columns, referenced table, referenced columns, ON DELETE action 'c' = CASCADE)
EXPECTED_FOREIGN_KEYS = {
    "user_accounts": {
        (("user_id",), "user", ("id",), "c"),
    },
    "user_credentials": {
        (("user_account_id",), "user_accounts", ("id",), "c"),
        (("user_account_id", "user_id"), "user_accounts", ("id", "user_id"), "c"),
    },
}
# index name -> (table, columns, unique)
EXPECTED_INDEXES = {
    "idx_user_accounts_user_id": ("user_accounts", ("user_id",), True),
    "idx_user_credentials_user_id": ("user_credentials", ("user_id",), False),
    "idx_user_credentials_account_id": ("user_credentials", ("user_account_id",), False),
    "idx_user_credentials_unique": (
        "user_credentials",
        ("user_account_id", "credential_type"),
        True,
    ),
}

COLUMNS_SQL = """
SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name = $1
ORDER BY ordinal_position
"""
FOREIGN_KEYS_SQL = """
SELECT
    ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
          ORDER BY k.pos) AS columns,
    c.confrelid::regclass::text AS referenced,
    ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
          ORDER BY k.pos) AS referenced_columns,
    c.confdeltype::text AS on_delete
FROM pg_constraint c
WHERE c.contype = 'f' AND c.conrelid = $1::regclass
"""
INDEXES_SQL = """
SELECT
    i.indexrelid::regclass::text AS name,
    i.indisunique AS is_unique,
    i.indpred IS NOT NULL AS is_partial,
    ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(num, pos)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
          ORDER BY k.pos) AS columns
FROM pg_index i
WHERE i.indrelid = $1::regclass
"""


def _envelope() -> str:
    """A syntactically valid envelope: what the encryption layer stores."""
    return "v1.test1." + base64.urlsafe_b64encode(secrets.token_bytes(40)).decode()


async def _columns(owner: asyncpg.Pool, table: str) -> list[asyncpg.Record]:
    return await owner.fetch(COLUMNS_SQL, table)


async def _insert_account(owner: asyncpg.Pool, user_id: str, name: str = "Paper Account") -> uuid.UUID:
    return await owner.fetchval(
        "INSERT INTO user_accounts (user_id, account_name) VALUES ($1, $2) RETURNING id",
        user_id,
        name,
    )


async def _insert_credential(
    owner: asyncpg.Pool,
    account_id: uuid.UUID,
    user_id: str,
    credential_type: str = "alpaca",
    **overrides: Any,
) -> uuid.UUID:
    values = {
        "user_account_id": account_id,
        "user_id": user_id,
        "credential_type": credential_type,
        "api_key": _envelope(),
        "secret_key": _envelope(),
        **overrides,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    return await owner.fetchval(
        f"INSERT INTO user_credentials ({names}) VALUES ({placeholders}) RETURNING id",
        *values.values(),
    )


async def _count(owner: asyncpg.Pool, table: str, where: str, *args: Any) -> int:
    return await owner.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)


# Columns ####################################################################


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "table, expected",
    [("user_accounts", USER_ACCOUNTS_COLUMNS), ("user_credentials", USER_CREDENTIALS_COLUMNS)],
)
async def test_columns_match_spec(owner: asyncpg.Pool, table: str, expected: dict) -> None:
    """Make sure every column has the specified type, length, nullability and default, and no others exist."""
    rows = await _columns(owner, table)
    assert [row["column_name"] for row in rows] == list(expected)
    for row in rows:
        data_type, length, nullable, defaults = expected[row["column_name"]]
        assert row["data_type"] == data_type, row
        assert row["character_maximum_length"] == length, row
        assert row["is_nullable"] == nullable, row
        assert row["column_default"] in defaults, row


@pytest.mark.asyncio
@pytest.mark.parametrize("table", ["user_accounts", "user_credentials"])
async def test_no_empty_string_defaults(owner: asyncpg.Pool, table: str) -> None:
    """Make sure no column defaults to '', so a forgotten required value fails instead of storing ''."""
    rows = await _columns(owner, table)
    offenders = [
        row["column_name"]
        for row in rows
        if row["column_default"] is not None and row["column_default"].startswith("''")
    ]
    assert offenders == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "table, column",
    [
        ("user_accounts", "user_id"),
        ("user_accounts", "account_name"),
        ("user_credentials", "user_id"),
        ("user_credentials", "credential_type"),
        ("user_credentials", "api_key"),
        ("user_credentials", "secret_key"),
    ],
)
async def test_required_column_cannot_be_omitted(
    owner: asyncpg.Pool, new_user, table: str, column: str
) -> None:
    """Make sure an INSERT that leaves out a required column is refused and stores nothing."""
    user_id = await new_user()
    if table == "user_accounts":
        values: dict[str, Any] = {"user_id": user_id, "account_name": "Paper Account"}
    else:
        account_id = await _insert_account(owner, user_id)
        values = {
            "user_account_id": account_id,
            "user_id": user_id,
            "credential_type": "alpaca",
            "api_key": _envelope(),
            "secret_key": _envelope(),
        }
    del values[column]
    placeholders = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    with pytest.raises(asyncpg.NotNullViolationError):
        await owner.execute(
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({placeholders})",
            *values.values(),
        )
    if table == "user_accounts":
        assert await _count(owner, table, "user_id = $1", user_id) == 0
    else:
        assert await _count(owner, table, "user_account_id = $1", account_id) == 0


@pytest.mark.asyncio
async def test_better_auth_user_table_matches_its_ddl(owner: asyncpg.Pool) -> None:
    """Make sure "user" has exactly Better Auth 1.7's columns, types, nullability and defaults."""
    rows = await _columns(owner, "user")
    actual = [
        (row["column_name"], row["data_type"], row["is_nullable"], row["column_default"])
        for row in rows
    ]
    assert actual == BETTER_AUTH_USER_COLUMNS


@pytest.mark.asyncio
async def test_better_auth_user_table_keys(owner: asyncpg.Pool) -> None:
    """Make sure "user" has only its primary key on id and a unique email, as Better Auth declares."""
    constraints = await owner.fetch(
        "SELECT contype::text AS kind, pg_get_constraintdef(oid) AS definition "
        "FROM pg_constraint WHERE conrelid = '\"user\"'::regclass "
        "AND contype <> 'n' "  # PostgreSQL 18 lists NOT NULL as constraints; the columns test covers them
        "ORDER BY contype"
    )
    assert sorted((c["kind"], c["definition"]) for c in constraints) == [
        ("p", "PRIMARY KEY (id)"),
        ("u", "UNIQUE (email)"),
    ]
    indexes = await owner.fetch(INDEXES_SQL, '"user"')
    assert sorted((tuple(i["columns"]), i["is_unique"]) for i in indexes) == [
        (("email",), True),
        (("id",), True),
    ]


# Foreign keys ###############################################################


@pytest.mark.asyncio
@pytest.mark.parametrize("table", sorted(EXPECTED_FOREIGN_KEYS))
async def test_foreign_keys_cascade_on_delete(owner: asyncpg.Pool, table: str) -> None:
    """Make sure each table has exactly the specified foreign keys, all ON DELETE CASCADE."""
    rows = await owner.fetch(FOREIGN_KEYS_SQL, table)
    actual = {
        (
            tuple(row["columns"]),
            row["referenced"].strip('"'),
            tuple(row["referenced_columns"]),
            row["on_delete"],
        )
        for row in rows
    }
    assert actual == EXPECTED_FOREIGN_KEYS[table]


# Indexes ####################################################################


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(EXPECTED_INDEXES))
async def test_named_index(owner: asyncpg.Pool, name: str) -> None:
    """Make sure the named index exists on the specified columns, with the specified uniqueness."""
    table, columns, unique = EXPECTED_INDEXES[name]
    indexes = {row["name"]: row for row in await owner.fetch(INDEXES_SQL, table)}
    assert name in indexes, f"{name} missing on {table}; found {sorted(indexes)}"
    index = indexes[name]
    assert tuple(index["columns"]) == columns
    assert index["is_unique"] is unique
    assert index["is_partial"] is False


@pytest.mark.asyncio
@pytest.mark.parametrize("table", ["user", "user_accounts", "user_credentials"])
async def test_no_duplicate_indexes(owner: asyncpg.Pool, table: str) -> None:
    """Make sure no table carries two indexes over the same column list."""
    rows = await owner.fetch(INDEXES_SQL, f'"{table}"')
    counts = Counter(tuple(row["columns"]) for row in rows)
    assert rows, f"{table} has no indexes at all"
    assert {columns: n for columns, n in counts.items() if n > 1} == {}


# Comments ###################################################################


@pytest.mark.asyncio
@pytest.mark.parametrize("table", ["user_accounts", "user_credentials"])
async def test_table_and_every_column_commented(owner: asyncpg.Pool, table: str) -> None:
    """Make sure the table and every one of its columns carry a non-empty COMMENT."""
    table_comment = await owner.fetchval(
        "SELECT obj_description($1::regclass, 'pg_class')", table
    )
    assert table_comment and table_comment.strip()
    rows = await owner.fetch(
        "SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment "
        "FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        table,
    )
    assert len(rows) == len(
        USER_ACCOUNTS_COLUMNS if table == "user_accounts" else USER_CREDENTIALS_COLUMNS
    )
    uncommented = [row["attname"] for row in rows if not (row["comment"] or "").strip()]
    assert uncommented == []


# Cascades ###################################################################


@pytest.mark.asyncio
async def test_deleting_user_removes_account_and_credentials(owner: asyncpg.Pool, new_user) -> None:
    """Make sure deleting a Better Auth user deletes their account and all its credentials."""
    user_id = await new_user()
    bystander = await new_user()
    account_id = await _insert_account(owner, user_id)
    other_account = await _insert_account(owner, bystander)
    await _insert_credential(owner, account_id, user_id, "alpaca")
    await _insert_credential(owner, account_id, user_id, "polygon")
    await _insert_credential(owner, other_account, bystander, "alpaca")
    assert await _count(owner, "user_credentials", "user_id = $1", user_id) == 2

    await owner.execute('DELETE FROM "user" WHERE id = $1', user_id)

    assert await _count(owner, "user_accounts", "user_id = $1", user_id) == 0
    assert await _count(owner, "user_credentials", "user_account_id = $1", account_id) == 0
    assert await _count(owner, "user_credentials", "user_id = $1", user_id) == 0
    # Someone else's data is not collateral damage.
    assert await _count(owner, "user_accounts", "user_id = $1", bystander) == 1
    assert await _count(owner, "user_credentials", "user_id = $1", bystander) == 1


@pytest.mark.asyncio
async def test_deleting_account_removes_credentials(owner: asyncpg.Pool, new_user) -> None:
    """Make sure deleting an account deletes its credentials and leaves the user in place."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    await _insert_credential(owner, account_id, user_id, "alpaca")
    await _insert_credential(owner, account_id, user_id, "polygon")

    await owner.execute("DELETE FROM user_accounts WHERE id = $1", account_id)

    assert await _count(owner, "user_credentials", "user_account_id = $1", account_id) == 0
    assert await _count(owner, "user_credentials", "user_id = $1", user_id) == 0
    assert await _count(owner, '"user"', "id = $1", user_id) == 1


# Uniqueness #################################################################


@pytest.mark.asyncio
async def test_one_credential_per_account_and_type(owner: asyncpg.Pool, new_user) -> None:
    """Make sure a second credential of the same type for one account is refused, and other types are not."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    first = await _insert_credential(owner, account_id, user_id, "alpaca")

    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await _insert_credential(owner, account_id, user_id, "alpaca")
    assert caught.value.constraint_name == "idx_user_credentials_unique"

    await _insert_credential(owner, account_id, user_id, "polygon")
    rows = await owner.fetch(
        "SELECT id, credential_type FROM user_credentials WHERE user_account_id = $1 "
        "ORDER BY credential_type",
        account_id,
    )
    assert [(r["id"], r["credential_type"]) for r in rows][0] == (first, "alpaca")
    assert [r["credential_type"] for r in rows] == ["alpaca", "polygon"]


@pytest.mark.asyncio
async def test_one_account_per_user(owner: asyncpg.Pool, new_user) -> None:
    """Make sure a user cannot get a second account."""
    user_id = await new_user()
    await _insert_account(owner, user_id)
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await _insert_account(owner, user_id, "Second Account")
    assert caught.value.constraint_name == "idx_user_accounts_user_id"
    assert await _count(owner, "user_accounts", "user_id = $1", user_id) == 1


# updated_at trigger #########################################################


@pytest.mark.asyncio
@pytest.mark.parametrize("table", ["user_accounts", "user_credentials"])
async def test_raw_update_bumps_updated_at(owner: asyncpg.Pool, new_user, table: str) -> None:
    """Make sure a raw UPDATE in a later transaction moves updated_at forward and keeps created_at."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    row_id = account_id
    if table == "user_credentials":
        row_id = await _insert_credential(owner, account_id, user_id)
    before = await owner.fetchrow(
        f"SELECT created_at, updated_at FROM {table} WHERE id = $1", row_id
    )

    await owner.execute(f"UPDATE {table} SET is_active = false WHERE id = $1", row_id)

    after = await owner.fetchrow(
        f"SELECT created_at, updated_at, is_active FROM {table} WHERE id = $1", row_id
    )
    assert after["is_active"] is False
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


@pytest.mark.asyncio
async def test_trigger_overrides_stale_updated_at(owner: asyncpg.Pool, new_user) -> None:
    """Make sure an UPDATE cannot set updated_at into the past: the trigger stamps the transaction time."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    async with owner.acquire() as connection:
        async with connection.transaction():
            now = await connection.fetchval("SELECT now()")
            stored = await connection.fetchval(
                "UPDATE user_accounts SET account_name = 'Renamed', "
                "updated_at = '2000-01-01T00:00:00Z' WHERE id = $1 RETURNING updated_at",
                account_id,
            )
    assert stored == now


# CHECKs and the owner-pinning foreign key ###################################


@pytest.mark.asyncio
async def test_account_with_empty_user_id_rejected(owner: asyncpg.Pool) -> None:
    """Make sure user_accounts refuses user_id '' by CHECK even when a "user" with id '' exists."""
    async with owner.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            # Better Auth's table would accept '' as an id; only our CHECK can stop it.
            await connection.execute(
                'INSERT INTO "user" (id, name, email, "emailVerified") '
                "VALUES ('', 'Nobody', 'nobody@example.test', false)"
            )
            with pytest.raises(asyncpg.CheckViolationError) as caught:
                async with connection.transaction():  # savepoint
                    await connection.execute(
                        "INSERT INTO user_accounts (user_id, account_name) VALUES ('', 'x')"
                    )
            assert caught.value.constraint_name == "user_accounts_user_id_not_empty"
            assert await connection.fetchval(
                "SELECT count(*) FROM user_accounts WHERE user_id = ''"
            ) == 0
        finally:
            await transaction.rollback()
    assert await _count(owner, '"user"', "id = ''") == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "overrides, error, constraint",
    [
        ({"user_id": ""}, asyncpg.CheckViolationError, "user_credentials_user_id_not_empty"),
        ({"api_key": ""}, asyncpg.CheckViolationError, "user_credentials_api_key_not_empty"),
        ({"secret_key": ""}, asyncpg.CheckViolationError, "user_credentials_secret_key_not_empty"),
        (
            {"credential_type": "Alpaca"},
            asyncpg.CheckViolationError,
            "user_credentials_credential_type_format",
        ),
        (
            {"credential_type": "ALPACA"},
            asyncpg.CheckViolationError,
            "user_credentials_credential_type_format",
        ),
        ({"credential_type": "a" * 51}, asyncpg.StringDataRightTruncationError, None),
    ],
    ids=["empty-user-id", "empty-api-key", "empty-secret-key", "mixed-case-type", "upper-type", "long-type"],
)
async def test_bad_credential_rejected(
    owner: asyncpg.Pool, new_user, overrides: dict, error: type, constraint: str | None
) -> None:
    """Make sure the database refuses a malformed credential and stores nothing."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    values = {"user_id": user_id, "credential_type": "alpaca", **overrides}
    with pytest.raises(error) as caught:
        await _insert_credential(
            owner, account_id, values.pop("user_id"), values.pop("credential_type"), **values
        )
    if constraint is not None:
        assert caught.value.constraint_name == constraint
    assert await _count(owner, "user_credentials", "user_account_id = $1", account_id) == 0


@pytest.mark.asyncio
async def test_credential_owner_must_match_account_owner(owner: asyncpg.Pool, new_user) -> None:
    """Make sure a credential whose user_id differs from its account's is refused, on INSERT and on UPDATE."""
    alice, mallory = await new_user(), await new_user()
    alice_account = await _insert_account(owner, alice)
    await _insert_account(owner, mallory)

    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await _insert_credential(owner, alice_account, mallory)
    assert caught.value.constraint_name == "user_credentials_account_owner_fkey"
    assert await _count(owner, "user_credentials", "user_account_id = $1", alice_account) == 0

    credential_id = await _insert_credential(owner, alice_account, alice)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await owner.execute(
            "UPDATE user_credentials SET user_id = $1 WHERE id = $2", mallory, credential_id
        )
    assert await owner.fetchval(
        "SELECT user_id FROM user_credentials WHERE id = $1", credential_id
    ) == alice
    assert await _count(owner, "user_credentials", "user_id = $1", mallory) == 0


@pytest.mark.asyncio
async def test_overlong_account_name_rejected(owner: asyncpg.Pool, new_user) -> None:
    """Make sure the database refuses an account_name over 255 characters and accepts exactly 255."""
    user_id = await new_user()
    with pytest.raises(asyncpg.StringDataRightTruncationError):
        await _insert_account(owner, user_id, "x" * 256)
    assert await _count(owner, "user_accounts", "user_id = $1", user_id) == 0
    await _insert_account(owner, user_id, "x" * 255)
    assert await _count(owner, "user_accounts", "user_id = $1", user_id) == 1


@pytest.mark.asyncio
async def test_account_for_unknown_user_rejected(owner: asyncpg.Pool) -> None:
    """Make sure an account cannot point at a user that Better Auth does not have."""
    ghost = f"ghost-{uuid.uuid4()}"
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _insert_account(owner, ghost)
    assert await _count(owner, "user_accounts", "user_id = $1", ghost) == 0


@pytest.mark.asyncio
async def test_defaults_fill_in(owner: asyncpg.Pool, new_user) -> None:
    """Make sure ids, is_active and timestamps are filled by the database when omitted."""
    user_id = await new_user()
    account_id = await _insert_account(owner, user_id)
    credential_id = await _insert_credential(owner, account_id, user_id)
    for table, row_id in (("user_accounts", account_id), ("user_credentials", credential_id)):
        row = await owner.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id)
        assert isinstance(row["id"], uuid.UUID) and row["id"].version == 4
        assert row["is_active"] is True
        assert row["created_at"] is not None and row["created_at"] == row["updated_at"]
    assert await owner.fetchval(
        "SELECT expires_at FROM user_credentials WHERE id = $1", credential_id
    ) is None
