"""The per-user scope, through the public API, as the application role."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from helpers import ROOT

from orchestrator_db import CredentialNotFound, ScopeError, current_scope, user_scope
from orchestrator_db.devdb import drop_database, with_database
from orchestrator_db.models import USER_ID_MAX_LENGTH
from orchestrator_db.tables import UserAccounts, UserCredentials


async def _user_with_credential(new_user, api_key: str | None = None) -> str:
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper Account")
        await scope.put_credential("alpaca", api_key or f"api-{user_id}", f"secret-{user_id}")
    return user_id


def _run_script(script: str, database_url: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter whose package engine uses ``database_url``."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- user ids are checked before the database is touched ------------------------

BAD_USER_IDS = [
    (None, TypeError),
    ("", ValueError),
    (42, TypeError),
    (b"user-1", TypeError),
    (uuid.UUID(int=1), TypeError),
    ("u" * (USER_ID_MAX_LENGTH + 1), ValueError),
    ("user\n1", ValueError),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "user_id, error",
    BAD_USER_IDS,
    ids=["none", "empty", "int", "bytes", "uuid", "too-long", "control"],
)
async def test_bad_user_id_rejected(user_id: object, error: type[Exception]) -> None:
    """Make sure None, '', non-str, over-long and control-character ids are refused."""
    with pytest.raises(error):
        async with user_scope(user_id):  # type: ignore[arg-type]
            pytest.fail("the scope must not open")


_VALIDATION_SCRIPT = r"""
import asyncio, json, uuid
from orchestrator_db import user_scope

CASES = {
    "none": None, "empty": "", "int": 42, "bytes": b"user-1", "uuid": uuid.UUID(int=1),
    "too-long": "u" * 256, "control": "user\n1", "valid": "a-valid-user-id",
}

async def attempt(user_id):
    try:
        async with user_scope(user_id):
            return "entered"
    except Exception as error:
        return type(error).__name__

async def main():
    return {name: await attempt(value) for name, value in CASES.items()}

print(json.dumps(asyncio.run(main())))
"""


def test_bad_user_ids_rejected_before_the_database_is_touched() -> None:
    """Make sure bad ids fail validation even when no database is reachable,
    while a good id goes on to try the (dead) database."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    outcome = _run_script(
        _VALIDATION_SCRIPT, f"postgresql://nobody:nothing@127.0.0.1:{dead_port}/nowhere"
    )
    expected = {
        "none": "TypeError", "empty": "ValueError", "int": "TypeError", "bytes": "TypeError",
        "uuid": "TypeError", "too-long": "ValueError", "control": "ValueError",
    }  # fmt: skip
    assert {name: outcome[name] for name in expected} == expected
    assert outcome["valid"] == "ConnectionLost"


@pytest.mark.asyncio
async def test_longest_user_id_is_accepted() -> None:
    """Make sure an id of exactly the maximum length opens a scope."""
    async with user_scope("u" * USER_ID_MAX_LENGTH) as scope:
        assert await scope.list_credentials() == []


# --- nesting ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scope_for_another_user_inside_a_scope_is_refused(
    owner, user_with_account: str, new_user
) -> None:
    """Make sure a scope for user B cannot open inside user A's, and A's scope carries on."""
    other = await new_user()
    async with user_scope(user_with_account) as scope:
        with pytest.raises(ScopeError, match="another user"):
            async with user_scope(other):
                pytest.fail("the nested scope must not open")
        await scope.put_credential("alpaca", "api-after-refusal", "secret")
        assert current_scope() is scope
    assert current_scope() is None
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_with_account
        )
        == 1
    )


@pytest.mark.asyncio
async def test_nested_scope_for_the_same_user_joins_the_outer_one(
    owner, user_with_account: str
) -> None:
    """Make sure a nested scope for the same user shares the outer transaction."""
    async with user_scope(user_with_account) as outer:
        async with user_scope(user_with_account) as inner:
            assert inner is outer
            await inner.put_credential("alpaca", "api-inner", "secret-inner")
        assert (await outer.get_credential("alpaca")).api_key.get_secret_value() == "api-inner"
        # Not committed yet: the inner scope's exit did not end the transaction.
        assert (
            await owner.fetchval(
                "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_with_account
            )
            == 0
        )
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_with_account
        )
        == 1
    )


# --- commit and rollback --------------------------------------------------------


@pytest.mark.asyncio
async def test_scope_commits_on_exit(owner, user_with_account: str) -> None:
    """Make sure writes made in a scope are stored when it exits normally."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", "api-committed", "secret-committed")
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_with_account
        )
        == 1
    )
    async with user_scope(user_with_account) as scope:
        credential = await scope.get_credential("alpaca")
    assert credential.api_key.get_secret_value() == "api-committed"


class _Boom(Exception):
    pass


@pytest.mark.asyncio
async def test_scope_rolls_back_on_exception(owner, new_user) -> None:
    """Make sure an exception inside a scope undoes all its writes and propagates."""
    user_id = await new_user()
    with pytest.raises(_Boom):
        async with user_scope(user_id) as scope:
            await scope.create_account("Doomed Account")
            await scope.put_credential("alpaca", "api-doomed", "secret-doomed")
            raise _Boom()
    assert (
        await owner.fetchval("SELECT count(*) FROM user_accounts WHERE user_id = $1", user_id) == 0
    )
    assert (
        await owner.fetchval("SELECT count(*) FROM user_credentials WHERE user_id = $1", user_id)
        == 0
    )
    async with user_scope(user_id) as scope:
        with pytest.raises(CredentialNotFound):
            await scope.get_credential("alpaca")


@pytest.mark.asyncio
async def test_rollback_keeps_earlier_committed_rows(owner, user_with_account: str) -> None:
    """Make sure a failed scope rolls back only its own writes, not an earlier scope's."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", "api-kept", "secret-kept")
    with pytest.raises(_Boom):
        async with user_scope(user_with_account) as scope:
            await scope.put_credential("alpaca", "api-replaced", "secret-replaced")
            await scope.put_credential("polygon", "api-new", "secret-new")
            raise _Boom()
    async with user_scope(user_with_account) as scope:
        kept = await scope.get_credential("alpaca")
        kinds = [credential.credential_type for credential in await scope.list_credentials()]
    assert (kept.api_key.get_secret_value(), kinds) == ("api-kept", ["alpaca"])


# --- concurrency ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fifty_interleaved_tasks_across_ten_users_are_isolated(owner, new_user) -> None:
    """Make sure 50 concurrent scopes for 10 users, interleaving their awaits,
    each see only their own user's rows."""
    users = [await new_user() for _ in range(10)]
    for user_id in users:
        async with user_scope(user_id) as scope:
            await scope.create_account("Shared Load")
    active, peak = 0, 0

    async def work(index: int) -> list[str]:
        nonlocal active, peak
        user_id = users[index % len(users)]
        kind, api_key = f"kind{index}", f"api-{index}-{user_id}"
        problems: list[str] = []
        async with user_scope(user_id) as scope:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001 * (index % 4))
            await scope.put_credential(kind, api_key, f"secret-{index}")
            await asyncio.sleep(0)
            mine = await scope.get_credential(kind)
            await asyncio.sleep(0.001)
            listed = await scope.list_credentials()
            await asyncio.sleep(0)
            rows = await UserCredentials.select(UserCredentials.user_id).run()
            accounts = await UserAccounts.select(UserAccounts.user_id).run()
            active -= 1
        async with user_scope(user_id) as scope:  # a read-only scope: the one-statement path
            reread = await scope.get_credential(kind)
            relisted = await scope.list_credentials()
        if (
            mine.api_key.get_secret_value() != api_key
            or reread.api_key.get_secret_value() != api_key
        ):
            problems.append(f"task {index} read back another value")
        seen = {c.user_id for c in listed + relisted} | {r["user_id"] for r in rows + accounts}
        if seen != {user_id}:
            problems.append(f"task {index} ({user_id}) saw {seen}")
        if kind not in {c.credential_type for c in listed}:
            problems.append(f"task {index} missed its own credential")
        return problems

    results = await asyncio.gather(*(work(index) for index in range(50)))
    assert [problem for problems in results for problem in problems] == []
    assert peak > 1, "the scopes never overlapped"
    counts = await owner.fetch(
        "SELECT user_id, count(*) AS n FROM user_credentials WHERE user_id = ANY($1::text[]) GROUP BY user_id",
        users,
    )
    assert {row["user_id"]: row["n"] for row in counts} == {user_id: 5 for user_id in users}


@pytest.mark.asyncio
async def test_scope_used_from_another_task_is_refused(owner, user_with_account: str) -> None:
    """Make sure a scope cannot be handed to another asyncio task, via its methods or Piccolo."""
    async with user_scope(user_with_account) as scope:
        with pytest.raises(ScopeError, match="another asyncio task"):
            await asyncio.create_task(scope.put_credential("alpaca", "api-stray", "secret"))
        with pytest.raises(ScopeError, match="another asyncio task"):
            await asyncio.create_task(scope.list_credentials())
        with pytest.raises(ScopeError, match="another asyncio task"):
            await asyncio.create_task(UserCredentials.select().run())
        assert await scope.list_credentials() == []  # still fine in its own task
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM user_credentials WHERE user_id = $1", user_with_account
        )
        == 0
    )


@pytest.mark.asyncio
async def test_task_started_inside_a_scope_opens_its_own(new_user) -> None:
    """Make sure a task spawned inside a scope can open its own scope, for any user, on its own connection."""
    parent, child = await new_user(), await new_user()
    for user_id in (parent, child):
        async with user_scope(user_id) as scope:
            await scope.create_account("Paper")

    async def child_task() -> list[str]:
        async with user_scope(child) as scope:
            await scope.put_credential("polygon", "child-api", "child-secret")
            return [c.user_id for c in await scope.list_credentials()]

    async with user_scope(parent) as scope:
        await scope.put_credential("alpaca", "parent-api", "parent-secret")
        assert await asyncio.create_task(child_task()) == [child]
        assert [c.credential_type for c in await scope.list_credentials()] == ["alpaca"]


# --- Piccolo queries inside a scope --------------------------------------------


@pytest.mark.asyncio
async def test_piccolo_queries_in_a_scope_see_only_that_user(owner, new_user) -> None:
    """Make sure plain Piccolo queries, with no WHERE on user, are confined to the scope's user."""
    alice = await _user_with_credential(new_user)
    bob = await _user_with_credential(new_user)
    async with user_scope(alice):
        credentials = await UserCredentials.select(UserCredentials.user_id).run()
        accounts = await UserAccounts.select(UserAccounts.user_id).run()
        count = await UserCredentials.count().run()
        await UserCredentials.update({UserCredentials.is_active: False}).where(
            UserCredentials.user_id == bob
        ).run()
        await UserAccounts.delete().where(UserAccounts.user_id == bob).run()
    assert credentials == [{"user_id": alice}]
    assert accounts == [{"user_id": alice}]
    assert count == 1
    assert (
        await owner.fetchval("SELECT is_active FROM user_credentials WHERE user_id = $1", bob)
        is True
    )
    assert await owner.fetchval("SELECT count(*) FROM user_accounts WHERE user_id = $1", bob) == 1


@pytest.mark.asyncio
async def test_piccolo_queries_outside_a_scope_see_nothing(owner, new_user) -> None:
    """Make sure the application role, with no scope, reads no tenant rows at all."""
    await _user_with_credential(new_user)
    assert await owner.fetchval("SELECT count(*) FROM user_credentials") > 0
    assert await UserCredentials.select().run() == []
    assert await UserAccounts.count().run() == 0


# --- roles that would bypass row-level security -----------------------------------

_BYPASS_SCRIPT = r"""
import asyncio, json, sys
from orchestrator_db import ScopeError, user_scope
from orchestrator_db.tables import UserCredentials

async def main(user_id, allow):
    try:
        async with user_scope(user_id, allow_rls_bypass=allow):
            rows = await UserCredentials.select(UserCredentials.user_id).run()
    except ScopeError as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"visible_users": sorted({row["user_id"] for row in rows})}

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2] == "allow"))))
"""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "role, names",
    [
        ("operator", ["BYPASSRLS", "application role"]),
        ("superuser", ["superuser", "create_roles"]),
    ],
)
async def test_scope_refuses_a_role_that_bypasses_rls(
    test_db, new_user, role: str, names: list[str]
) -> None:
    """Make sure a scope on a BYPASSRLS or superuser connection raises ScopeError naming the fix."""
    await _user_with_credential(new_user)
    url = test_db.operator_url if role == "operator" else test_db.owner_url
    outcome = await asyncio.to_thread(_run_script, _BYPASS_SCRIPT, url, "probe-user", "refuse")
    assert outcome.get("error") == "ScopeError", outcome
    for name in names + ["Fix:"]:
        assert name in outcome["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize("role", ["operator", "superuser"])
async def test_allow_rls_bypass_opts_out_of_the_refusal(test_db, new_user, role: str) -> None:
    """Make sure allow_rls_bypass=True lets the scope run, and shows why it is refused
    by default: the bypassing role sees other users' rows."""
    someone_else = await _user_with_credential(new_user)
    url = test_db.operator_url if role == "operator" else test_db.owner_url
    outcome = await asyncio.to_thread(_run_script, _BYPASS_SCRIPT, url, "probe-user", "allow")
    assert someone_else in outcome.get("visible_users", []), outcome


@pytest_asyncio.fixture
async def plain_owner_database(test_db, migrated_database) -> AsyncIterator[tuple[str, str]]:
    """A scratch database whose tenant tables belong to a plain (non-superuser) role:
    (superuser URL, that owner's URL)."""
    superuser_url = await migrated_database()
    name = urlsplit(superuser_url).path.lstrip("/")
    role, password = f"odb_tblowner_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    conn = await asyncpg.connect(superuser_url)
    try:
        await conn.execute(
            f"CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{password}'"
        )
        for table in ("user_accounts", "user_credentials"):
            await conn.execute(f'ALTER TABLE {table} OWNER TO "{role}"')
    finally:
        await conn.close()
    app_parts = urlsplit(with_database(test_db.app_url, name))
    owner_url = urlunsplit(
        app_parts._replace(netloc=f"{role}:{quote(password)}@{app_parts.hostname}:{app_parts.port}")
    )
    yield superuser_url, owner_url
    await drop_database(test_db.server_url, name)  # before the role, which owns tables there
    conn = await asyncpg.connect(test_db.server_url)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_scope_refuses_the_table_owner_without_force(plain_owner_database) -> None:
    """Make sure an owner role is refused when FORCE is off (owners then skip the
    policies), and allowed, confined to its scope, when FORCE is on."""
    superuser_url, owner_url = plain_owner_database
    conn = await asyncpg.connect(superuser_url)
    try:
        await conn.execute(
            """INSERT INTO "user" (id, name, email, "emailVerified") VALUES ('victim', 'v', 'v@x.test', true);
            INSERT INTO user_accounts (user_id, account_name) VALUES ('victim', 'victim account');
            INSERT INTO user_credentials (user_account_id, user_id, credential_type, api_key, secret_key)
                SELECT id, user_id, 'alpaca', 'v1.k.a', 'v1.k.s' FROM user_accounts"""
        )
        forced = await asyncio.to_thread(
            _run_script, _BYPASS_SCRIPT, owner_url, "probe-user", "refuse"
        )
        await conn.execute("ALTER TABLE user_credentials NO FORCE ROW LEVEL SECURITY")
        unforced = await asyncio.to_thread(
            _run_script, _BYPASS_SCRIPT, owner_url, "probe-user", "refuse"
        )
        allowed = await asyncio.to_thread(
            _run_script, _BYPASS_SCRIPT, owner_url, "probe-user", "allow"
        )
    finally:
        await conn.close()
    assert forced == {"visible_users": []}
    assert unforced.get("error") == "ScopeError", unforced
    assert "FORCE ROW LEVEL SECURITY" in unforced["message"]
    assert allowed == {"visible_users": ["victim"]}
