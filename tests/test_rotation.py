"""Key status, online key rotation and the plaintext migration, against real PostgreSQL.

Rotation works on a whole table, and other tests leave rows that are not
envelopes (the RLS tests insert placeholder values), so this module runs on
a database of its own: migrated, with its own application and operator
roles, and with the package's engine pointed at it while the module runs.
Every test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from legacy_formats import legacy_mfa, v1_envelope

from orchestrator_db import DecryptionError, close_pool, open_pool, user_scope
from orchestrator_db.admin.auth import KeyRingMFAEncryption
from orchestrator_db.crypto.envelopes import cells, row_cells, seal, unseal
from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry, is_envelope
from orchestrator_db.crypto.providers import use_key_ring
from orchestrator_db.devdb.provisioning import drop_provisioned_database, provision_database
from orchestrator_db.engine import forget_engine
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.rotation import (
    PLAINTEXT,
    BatchProgress,
    by_key,
    encrypt_plaintext,
    envelope_counts,
    format_counts,
    key_status,
    retirable_key_ids,
    rotate_keys,
)
from orchestrator_db.settings import use_settings

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
PICCOLO = str(Path(sys.executable).with_name("piccolo"))

Expected = dict[tuple[str, str], tuple[str, str]]


def cli(url: str, key_ring_text: str, *args: str) -> subprocess.CompletedProcess:
    """The real `piccolo` CLI, as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": url, "ORCHESTRATOR_DB_KEYS": key_ring_text}
    return subprocess.run(
        [PICCOLO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def piccolo(url: str, key_ring_text: str, *args: str) -> subprocess.CompletedProcess:
    return cli(url, key_ring_text, "orchestrator_db", *args)


@dataclass
class RotationDatabase:
    owner_url: str  # superuser: setup and raw reads
    app_url: str  # RLS applies: what the public API runs as
    operator_url: str  # BYPASSRLS: what rotation runs as
    owner: asyncpg.Pool


async def _point_package_at(url: str | None) -> None:
    """Rebuild the package's engine and pool for ``url`` (None: the environment's), as a fresh process would."""
    await close_pool()
    if url is None:
        use_settings()
    else:
        use_settings(database_url=url)
    forget_engine()  # get_engine() rebuilds it and rebinds the tables
    await open_pool()


@pytest_asyncio.fixture(scope="module", autouse=True)
async def db(test_db) -> AsyncIterator[RotationDatabase]:
    """This module's own migrated database and roles, with the package pointed at it."""
    provisioned = await provision_database(test_db.server_url, "odb_rotation")
    try:
        owner = await asyncpg.create_pool(provisioned.owner_url, min_size=1, max_size=4)
        await _point_package_at(provisioned.app_url)
        try:
            yield RotationDatabase(
                provisioned.owner_url, provisioned.app_url, provisioned.operator_url, owner
            )
        finally:
            await _point_package_at(None)
            await owner.close()
    finally:
        await drop_provisioned_database(provisioned)


@pytest.fixture
def owner(db: RotationDatabase) -> asyncpg.Pool:
    """The superuser pool of this module's database (shadows the session's ``owner``)."""
    return db.owner


@dataclass
class Keys:
    """This test's keys: ``old`` wrote the data, ``new`` rotates it."""

    prefix: str  # every user this test makes has an id starting with it
    old_entry: str
    new_entry: str

    @property
    def old_id(self) -> str:
        return self.old_entry.partition(":")[0]

    @property
    def new_id(self) -> str:
        return self.new_entry.partition(":")[0]

    @property
    def old(self) -> KeyRing:
        return KeyRing.parse(self.old_entry)

    @property
    def new_text(self) -> str:
        """The rotation ring: the new key first, then the old one."""
        return f"{self.new_entry},{self.old_entry}"

    @property
    def new(self) -> KeyRing:
        return KeyRing.parse(self.new_text)

    @property
    def new_only(self) -> KeyRing:
        """The ring once the old key is retired."""
        return KeyRing.parse(self.new_entry)


@pytest_asyncio.fixture
async def keys(owner: asyncpg.Pool) -> AsyncIterator[Keys]:
    """Fresh keys, the old one as the package's ring; afterwards the tables are emptied."""
    suffix = secrets.token_hex(3)
    made = Keys(
        prefix=f"rot-{suffix}",
        old_entry=generate_key_entry(f"old{suffix}"),
        new_entry=generate_key_entry(f"new{suffix}"),
    )
    use_key_ring(made.old)
    try:
        yield made
    finally:
        use_key_ring(None)
        await owner.execute('DELETE FROM "user"')  # cascades to accounts and credentials


@pytest_asyncio.fixture
async def operator(db: RotationDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection as the operator role (BYPASSRLS), as the commands use."""
    connection = await asyncpg.connect(db.operator_url)
    yield connection
    await connection.close()


async def new_user(owner: asyncpg.Pool, user_id: str) -> str:
    await owner.execute(
        'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $1, $1, true)', user_id
    )
    return user_id


async def seed(
    owner: asyncpg.Pool,
    key_ring: KeyRing | None,
    prefix: str,
    users: int,
    types: tuple[str, ...] = ("alpaca",),
    v1_entry: str | None = None,
) -> Expected:
    """Bulk-load users, accounts and credentials as the owner would (COPY-like).

    Values are sealed with ``key_ring`` exactly as the store seals them, or
    stored as plaintext when it is None (a deployment of the original plan),
    or, given ``v1_entry`` (a ring entry), as v1 envelopes under that key.
    """
    start = await owner.fetchval('SELECT count(*) FROM "user" WHERE id LIKE $1', prefix + "-%")
    user_ids = [f"{prefix}-{start + i:05d}" for i in range(users)]
    account_ids = [uuid.uuid4() for _ in user_ids]
    await owner.execute(
        'INSERT INTO "user" (id, name, email, "emailVerified") '
        "SELECT u, 'Rotation Test', u || '@example.test', true FROM unnest($1::text[]) AS u",
        user_ids,
    )
    await owner.execute(
        "INSERT INTO user_accounts (id, user_id, account_name) "
        "SELECT a, u, 'Paper' FROM unnest($1::uuid[], $2::text[]) AS t(a, u)",
        account_ids,
        user_ids,
    )
    expected: Expected = {}
    columns: list[list] = [[], [], [], [], [], []]
    for user_id, account_id in zip(user_ids, account_ids):
        for credential_type in types:
            row_id = uuid.uuid4()
            api_key = f"AKIA-{credential_type}-{secrets.token_hex(6)}"
            secret_key = f"sk-{secrets.token_urlsafe(12)}"
            expected[(user_id, credential_type)] = (api_key, secret_key)
            if key_ring is not None:
                cell = cells(
                    row_id=row_id,
                    user_id=user_id,
                    account_id=account_id,
                    credential_type=credential_type,
                )
                if v1_entry is not None:
                    api_key = v1_envelope(v1_entry, api_key, cell["api_key"])
                    secret_key = v1_envelope(v1_entry, secret_key, cell["secret_key"])
                else:
                    api_key = seal(key_ring, api_key, cell["api_key"])
                    secret_key = seal(key_ring, secret_key, cell["secret_key"])
            for column, value in zip(
                columns, (row_id, account_id, user_id, credential_type, api_key, secret_key)
            ):
                column.append(value)
    await owner.execute(
        "INSERT INTO user_credentials "
        "(id, user_account_id, user_id, credential_type, api_key, secret_key) "
        "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])",
        *columns,
    )
    return expected


async def assert_readable(expected: Expected, key_ring: KeyRing) -> None:
    """Every credential reads back through the public API, with the values last written."""
    use_key_ring(key_ring)
    for (user_id, credential_type), (api_key, secret_key) in expected.items():
        async with user_scope(user_id) as scope:
            credential = await scope.get_credential(credential_type)
        assert credential.api_key.get_secret_value() == api_key
        assert credential.secret_key.get_secret_value() == secret_key


async def my_rows(owner: asyncpg.Pool, keys: Keys) -> list[asyncpg.Record]:
    return await owner.fetch(
        "SELECT id, user_id, user_account_id, credential_type, api_key, secret_key, updated_at "
        "FROM user_credentials WHERE user_id LIKE $1 ORDER BY id",
        keys.prefix + "-%",
    )


def key_ids_of(rows: list[asyncpg.Record]) -> Counter:
    """Values per key id, read straight from the envelopes (plaintext apart)."""
    values = [row[column] for row in rows for column in ("api_key", "secret_key")]
    return Counter(v.split(".")[1] if is_envelope(v) else PLAINTEXT for v in values)


async def backends_gone(connection: asyncpg.Connection) -> None:
    """Wait until the killed client's server process has ended (and rolled back)."""
    for _ in range(200):
        others = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE usename = current_user AND pid <> pg_backend_pid()"
        )
        if others == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the killed rotation's database session never ended")


def words(line: str) -> str:
    """A key table line without its key id, spacing normalised."""
    return " ".join(line.split()[1:])


def line_for(output: str, key_id: str) -> str:
    """The key table's line for one key id (the first one: 'before' in rotate_keys)."""
    for line in output.splitlines():
        if line.split()[:1] == [key_id]:
            return line
    raise AssertionError(f"no line for key id {key_id!r} in:\n{output}")


# Rotation ####################################################################


async def test_rotation_moves_every_value_to_the_new_key(keys, owner, operator):
    """Make sure rotation moves every value to the new key, after which the old keys can go."""
    expected = await seed(owner, keys.old, keys.prefix, 150, ("alpaca", "polygon"))
    for i in range(5):  # and some written through the public API, under the old ring
        user_id = await new_user(owner, f"{keys.prefix}-api-{i}")
        async with user_scope(user_id) as scope:
            await scope.create_account("Paper")
            await scope.put_credential("alpaca", f"api-{i}-AKIA", f"secret-{i}-sk")
        expected[(user_id, "alpaca")] = (f"api-{i}-AKIA", f"secret-{i}-sk")
    before_rows = await my_rows(owner, keys)
    assert key_ids_of(before_rows) == {keys.old_id: 2 * len(expected)}
    assert await key_status(operator) == {keys.old_id: 2 * len(expected)}
    total_rows = len(expected)

    seen: list[BatchProgress] = []
    result = await rotate_keys(operator, keys.new, batch_size=64, progress=seen.append)

    assert (result.key_id, result.rows, result.values, result.remaining) == (
        keys.new_id,
        total_rows,
        2 * total_rows,
        0,
    )
    assert result.batches == len(seen) >= total_rows // 64
    assert max(p.rows for p in seen) == 64 and seen[-1].total_rows == total_rows
    after = await key_status(operator)
    assert after == {keys.new_id: 2 * total_rows}
    assert retirable_key_ids(after, keys.new) == [keys.old_id]
    after_rows = await my_rows(owner, keys)
    assert key_ids_of(after_rows) == {keys.new_id: 2 * len(expected)}
    for old, new in zip(before_rows, after_rows):
        assert old["id"] == new["id"] and old["api_key"] != new["api_key"]
    await assert_readable(expected, keys.new_only)


async def test_rerun_touches_only_what_is_not_current(keys, owner, operator):
    """Make sure a re-run changes nothing that is current, and only the stale value of a half-current row."""
    await seed(owner, keys.old, keys.prefix, 60)
    await rotate_keys(operator, keys.new, batch_size=25)
    snapshot = await my_rows(owner, keys)

    again = await rotate_keys(operator, keys.new, batch_size=25)
    assert (again.rows, again.values, again.remaining) == (0, 0, 0)
    assert await my_rows(owner, keys) == snapshot  # not even updated_at moved

    stale = snapshot[30]  # put one value back under the old key
    cell = row_cells(stale)["secret_key"]
    await owner.execute(
        "UPDATE user_credentials SET secret_key = $2 WHERE id = $1",
        stale["id"],
        seal(keys.old, "sk-half-stale", cell),
    )
    result = await rotate_keys(operator, keys.new, batch_size=25)
    assert (result.rows, result.values) == (1, 1)
    fixed = next(row for row in await my_rows(owner, keys) if row["id"] == stale["id"])
    assert fixed["api_key"] == stale["api_key"]
    assert unseal(keys.new_only, fixed["secret_key"], cell) == "sk-half-stale"


async def write_while(
    rotation: asyncio.Task, users: list[str], expected: Expected, *, writers: int
) -> int:
    """Put credentials through the public API from ``writers`` tasks until the rotation
    ends (and ``writers`` puts each at least), recording them in ``expected``.

    Returns how many puts ran while the rotation was still going.
    """
    during_rotation = 0

    async def writer(mine: list[str], number: int) -> None:
        nonlocal during_rotation
        i = 0
        while not rotation.done() or i < writers:
            user_id = mine[i % len(mine)]
            credential_type = ("alpaca", "polygon", "tiingo")[(i // len(mine)) % 3]
            values = (f"api-{number}-{i}", f"secret-{number}-{i}")
            async with user_scope(user_id) as scope:
                await scope.put_credential(credential_type, *values)
            expected[(user_id, credential_type)] = values
            during_rotation += not rotation.done()
            i += 1

    await asyncio.gather(*(writer(users[n::writers], n) for n in range(writers)))
    return during_rotation


async def test_rotation_concurrent_with_writes_loses_nothing(keys, owner, operator):
    """Make sure writes through the public API during a rotation are all kept and all decrypt."""
    expected = await seed(owner, keys.old, keys.prefix, 80, ("alpaca", "polygon"))
    use_key_ring(keys.new)  # the app processes run the new ring before rotation starts
    users = sorted({user_id for user_id, _ in expected})
    rotation = asyncio.create_task(rotate_keys(operator, keys.new, batch_size=4))
    during_rotation = await write_while(rotation, users, expected, writers=6)
    result = await rotation

    assert during_rotation >= 6
    assert result.remaining == 0
    assert set(await key_status(operator)) == {keys.new_id}
    stored = {(row["user_id"], row["credential_type"]) for row in await my_rows(owner, keys)}
    assert stored == set(expected)
    await assert_readable(expected, keys.new_only)


async def test_rotation_upgrades_v1_to_v2_with_concurrent_writes(keys, owner, operator):
    """Make sure rotate_keys re-seals v1 envelopes as v2 even under the active key, while writers run, losing nothing."""
    expected = await seed(
        owner, keys.old, keys.prefix, 60, ("alpaca", "polygon"), v1_entry=keys.old_entry
    )
    counts = await envelope_counts(operator)
    assert format_counts(counts) == {"v1": 4 * 60}
    await assert_readable(dict(list(expected.items())[:5]), keys.old)  # v1 still decrypts
    users = sorted({user_id for user_id, _ in expected})
    use_key_ring(keys.old)  # same key: only the format is stale
    rotation = asyncio.create_task(rotate_keys(operator, keys.old, batch_size=4))
    during_rotation = await write_while(rotation, users, expected, writers=4)
    result = await rotation

    assert during_rotation >= 4
    assert result.remaining == 0 and result.key_id == keys.old_id
    after = await envelope_counts(operator)
    assert format_counts(after) == {"v2": 2 * len(expected)}  # no v1 left
    assert by_key(after) == {keys.old_id: 2 * len(expected)}
    stored = {(row["user_id"], row["credential_type"]) for row in await my_rows(owner, keys)}
    assert stored == set(expected)
    await assert_readable(expected, keys.old)


async def test_v1_rows_after_rotation_are_bound_to_credential_type(keys, owner, operator):
    """Make sure a v1 row whose credential_type is swapped with another's, after rotate_keys, fails with DecryptionError."""
    await seed(owner, keys.old, keys.prefix, 1, ("alpaca", "polygon"), v1_entry=keys.old_entry)
    [user_id] = {row["user_id"] for row in await my_rows(owner, keys)}
    result = await rotate_keys(operator, keys.old)
    assert result.remaining == 0 and "v1" not in format_counts(await envelope_counts(operator))
    use_key_ring(keys.old)
    async with user_scope(user_id) as scope:
        alpaca = (await scope.get_credential("alpaca")).api_key.get_secret_value()
    assert alpaca.startswith("AKIA-alpaca-")

    async with owner.acquire() as connection, connection.transaction():
        for old, new in (("alpaca", "swap"), ("polygon", "alpaca"), ("swap", "polygon")):
            await connection.execute(
                "UPDATE user_credentials SET credential_type = $3 "
                "WHERE user_id = $1 AND credential_type = $2",
                user_id,
                old,
                new,
            )
    async with user_scope(user_id) as scope:
        for credential_type in ("alpaca", "polygon"):
            with pytest.raises(DecryptionError):
                await scope.get_credential(credential_type)


async def test_rotate_keys_command_reseals_legacy_mfa_secrets(keys, owner, db):
    """Make sure `rotate_keys` re-seals MFA secrets of the format before v2 (the migration path), and the admin's provider reads them after."""
    operator_id = await owner.fetchval(
        "INSERT INTO piccolo_user (username, password, email, active, admin, superuser) "
        "VALUES ($1::text, 'x', $1::text || '@ops.test', true, true, false) RETURNING id",
        f"{keys.prefix}-op",
    )
    legacy = legacy_mfa(keys.old_entry, "JBSWY3DPEHPK3PXP")
    secret_id = await owner.fetchval(
        "INSERT INTO authenticator_secret (user_id, secret, recovery_codes, created_at) "
        "VALUES ($1, $2, '{}', now()) RETURNING id",
        operator_id,
        legacy,
    )
    with pytest.raises(DecryptionError):
        KeyRingMFAEncryption(keys.new).decrypt(legacy)  # the admin reads only v2

    done = await asyncio.to_thread(piccolo, db.operator_url, keys.new_text, "rotate_keys")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 MFA secrets re-sealed" in done.stdout
    assert "JBSWY3DPEHPK3PXP" not in done.stdout + done.stderr
    stored = await owner.fetchval("SELECT secret FROM authenticator_secret WHERE id = $1", secret_id)
    assert stored.startswith(f"odbmfa-v2.{keys.new_id}.")
    assert KeyRingMFAEncryption(keys.new_only).decrypt(stored) == "JBSWY3DPEHPK3PXP"
    await owner.execute("DELETE FROM authenticator_secret WHERE id = $1", secret_id)
    await owner.execute("DELETE FROM piccolo_user WHERE id = $1", operator_id)


async def test_key_status_command_shows_format_versions(keys, owner, db):
    """Make sure `key_status` prints envelopes per format version, and none of v1 after `rotate_keys`."""
    await seed(owner, keys.old, keys.prefix, 3, v1_entry=keys.old_entry)
    before = await asyncio.to_thread(piccolo, db.operator_url, keys.old_entry, "key_status")
    assert before.returncode == 0, before.stdout + before.stderr
    assert line_for(before.stdout, "v1").split()[1] == "6"
    rotated = await asyncio.to_thread(piccolo, db.operator_url, keys.old_entry, "rotate_keys")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = await asyncio.to_thread(piccolo, db.operator_url, keys.old_entry, "key_status")
    assert line_for(after.stdout, "v1").split()[1] == "0"
    assert line_for(after.stdout, "v2").split()[1] == "6"


async def test_cancelled_rotation_then_rerun_completes(keys, owner, operator, db):
    """Make sure a rotation cancelled after its first batch keeps that batch, and a re-run finishes."""
    expected = await seed(owner, keys.old, keys.prefix, 120)
    total_rows = await owner.fetchval("SELECT count(*) FROM user_credentials")
    seen: list[BatchProgress] = []

    def cancel_after_first_batch(progress: BatchProgress) -> None:
        seen.append(progress)
        asyncio.current_task().cancel()

    task = asyncio.create_task(
        rotate_keys(operator, keys.new, batch_size=25, progress=cancel_after_first_batch)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) == 1

    connection = await asyncpg.connect(db.operator_url)
    try:
        assert (await key_status(connection))[keys.new_id] == 2 * 25
        result = await rotate_keys(connection, keys.new, batch_size=25)
        assert (result.rows, result.remaining) == (total_rows - 25, 0)
        assert set(await key_status(connection)) == {keys.new_id}
    finally:
        await connection.close()
    await assert_readable(expected, keys.new_only)


async def test_rotation_killed_mid_batch_then_rerun_completes(keys, owner, operator, db):
    """Make sure `rotate_keys` killed with SIGKILL mid-run leaves whole batches, and re-runs finish it."""
    expected = await seed(owner, keys.old, keys.prefix, 1500)
    total_rows = len(expected)
    env = {
        **os.environ,
        "DATABASE_URL": db.operator_url,
        "ORCHESTRATOR_DB_KEYS": keys.new_text,
    }
    process = await asyncio.create_subprocess_exec(
        PICCOLO,
        "orchestrator_db",
        "rotate_keys",
        "--batch_size=1",
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    batches_seen = 0
    try:
        while batches_seen < 20:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line, "rotate_keys ended before reporting 20 batches"
            batches_seen += line.startswith(b"batch ")
    finally:
        process.kill()
        await process.wait()
    assert process.returncode == -9
    await backends_gone(operator)

    rotated_rows = (await key_status(operator)).get(keys.new_id, 0) // 2
    assert 20 <= rotated_rows < total_rows  # killed part-way, whole batches kept

    finished = await asyncio.to_thread(
        piccolo, db.operator_url, keys.new_text, "rotate_keys", "--batch_size=200"
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert (
        f"{total_rows - rotated_rows} rows ({2 * (total_rows - rotated_rows)} values)"
        in finished.stdout
    )
    after = finished.stdout.split("after (")[1]
    assert line_for(after, keys.new_id).split()[1] == str(2 * total_rows)
    assert line_for(after, keys.old_id).split()[1] == "0"

    await assert_readable(expected, keys.new_only)  # every row, without the old key

    again = await asyncio.to_thread(
        piccolo, db.operator_url, keys.new_text, "rotate_keys", "--batch_size=200"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "\n0 rows (0 values) re-encrypted" in again.stdout


async def test_rotation_stops_at_a_row_that_does_not_decrypt(keys, owner, operator):
    """Make sure an undecryptable row stops rotation with DecryptionError naming the row, not its value."""
    expected = await seed(owner, keys.old, keys.prefix, 100)
    rows = await my_rows(owner, keys)
    bad, donor = rows[60], rows[10]
    await owner.execute(  # an envelope moved from another row
        "UPDATE user_credentials SET api_key = $2 WHERE id = $1", bad["id"], donor["api_key"]
    )
    with pytest.raises(DecryptionError) as caught:
        await rotate_keys(operator, keys.new, batch_size=10)
    message = str(caught.value)
    assert str(bad["id"]) in message
    assert donor["api_key"] not in message and not any(
        value in message for pair in expected.values() for value in pair
    )
    after = await my_rows(owner, keys)
    # The six batches before it were committed; its own was rolled back.
    assert key_ids_of(after) == {keys.new_id: 2 * 60, keys.old_id: 2 * 40}
    assert next(row for row in after if row["id"] == bad["id"])["api_key"] == donor["api_key"]

    plaintext = "sk-PLAINTEXT-in-an-encrypted-column"
    await owner.execute(
        "UPDATE user_credentials SET api_key = $2, secret_key = $3 WHERE id = $1",
        bad["id"],
        bad["api_key"],
        plaintext,
    )
    with pytest.raises(DecryptionError) as caught:
        await rotate_keys(operator, keys.new, batch_size=10)
    message = str(caught.value)
    assert str(bad["id"]) in message and "encrypt_plaintext" in message
    assert plaintext not in message


async def test_operator_tools_refuse_a_role_under_rls(db, keys):
    """Make sure status and rotation refuse a role that RLS hides rows from, instead of reporting nothing."""
    connection = await asyncpg.connect(db.app_url)
    try:
        with pytest.raises(ConfigurationError, match="row-level security"):
            await key_status(connection)
        with pytest.raises(ConfigurationError, match="operator role"):
            await rotate_keys(connection, keys.new)
        with pytest.raises(ConfigurationError, match="operator role"):
            await encrypt_plaintext(connection, keys.new)
    finally:
        await connection.close()
    failed = await asyncio.to_thread(piccolo, db.app_url, keys.new_text, "key_status")
    assert failed.returncode == 2 and "row-level security" in failed.stderr


async def test_batch_size_must_be_positive(operator, keys):
    """Make sure a zero batch size is refused up front rather than looping or doing nothing."""
    with pytest.raises(ConfigurationError, match="batch_size"):
        await rotate_keys(operator, keys.new, batch_size=0)


async def test_rotate_keys_command_refuses_what_it_cannot_rotate(keys, owner, db):
    """Make sure `rotate_keys` changes nothing when a key is missing from the ring or plaintext remains."""
    await seed(owner, keys.old, keys.prefix, 10)
    snapshot = await my_rows(owner, keys)

    missing = await asyncio.to_thread(piccolo, db.operator_url, keys.new_entry, "rotate_keys")
    assert missing.returncode == 2
    assert keys.old_id in missing.stderr and "not in the key ring" in missing.stderr
    assert await my_rows(owner, keys) == snapshot

    plaintext = "sk-PLAINTEXT-legacy"
    await owner.execute(
        "UPDATE user_credentials SET secret_key = $2 WHERE id = $1", snapshot[5]["id"], plaintext
    )
    legacy = await asyncio.to_thread(piccolo, db.operator_url, keys.new_text, "rotate_keys")
    assert legacy.returncode == 2 and "encrypt_plaintext" in legacy.stderr
    assert plaintext not in legacy.stdout + legacy.stderr
    assert key_ids_of(await my_rows(owner, keys))[keys.old_id] == 2 * 10 - 1


# Key status ##################################################################


async def test_key_status_command_counts_keys_and_flags_a_missing_one(keys, owner, db):
    """Make sure `key_status` prints values per key id, and exits non-zero when a used key is not in the ring."""
    await seed(owner, keys.old, keys.prefix, 50)

    ok = await asyncio.to_thread(piccolo, db.operator_url, keys.new_text, "key_status")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert words(line_for(ok.stdout, keys.old_id)) == "100 in the ring, still in use"
    assert words(line_for(ok.stdout, keys.new_id)) == "0 active: encrypts new values"
    assert "no key can be retired yet" in ok.stdout

    missing = await asyncio.to_thread(piccolo, db.operator_url, keys.new_entry, "key_status")
    assert missing.returncode == 1
    assert "MISSING FROM THE KEY RING" in line_for(missing.stdout, keys.old_id)
    assert "ERROR" in missing.stderr and keys.old_id in missing.stderr


# Plaintext migration #########################################################


async def test_encrypt_plaintext_command_encrypts_legacy_rows(keys, owner, db, operator):
    """Make sure `encrypt_plaintext` turns plaintext rows into envelopes that decrypt, without printing them."""
    expected = await seed(owner, None, keys.prefix, 110, ("alpaca", "polygon"))
    rows = await my_rows(owner, keys)
    # Plaintext that merely looks like an envelope must be encrypted too, and
    # its would-be key id must not be printed.
    lookalike = "v1.leakykid." + "A" * 36  # too short a body for nonce and tag
    odd_body = "v1.leakykid." + "A" * 41  # a length no base64url encoding has
    half = rows[0]  # api_key already an envelope, secret_key plaintext
    await owner.execute(
        "UPDATE user_credentials SET api_key = $2 WHERE id = $1",
        half["id"],
        seal(keys.new, half["api_key"], row_cells(half)["api_key"]),
    )
    await owner.execute(
        "UPDATE user_credentials SET api_key = $2, secret_key = $3 WHERE id = $1",
        rows[1]["id"],
        lookalike,
        odd_body,
    )
    expected[(rows[1]["user_id"], rows[1]["credential_type"])] = (lookalike, odd_body)
    plaintext_values = 2 * len(expected) - 1
    assert await key_status(operator) == {PLAINTEXT: plaintext_values, keys.new_id: 1}

    done = await asyncio.to_thread(
        piccolo, db.operator_url, keys.new_text, "encrypt_plaintext", "--batch_size=50"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert f"{plaintext_values} plaintext values in {len(expected)} rows" in output
    assert "leakykid" not in output
    for pair in expected.values():
        assert pair[0] not in output and pair[1] not in output

    after = await my_rows(owner, keys)
    assert all(is_envelope(row[c]) for row in after for c in ("api_key", "secret_key"))
    assert key_ids_of(after) == {keys.new_id: 2 * len(expected)}
    assert await key_status(operator) == {keys.new_id: 2 * len(expected)}
    await assert_readable(expected, keys.new)

    again = await asyncio.to_thread(piccolo, db.operator_url, keys.new_text, "encrypt_plaintext")
    assert again.returncode == 0
    assert "0 plaintext values in 0 rows" in again.stdout
    assert await my_rows(owner, keys) == after


async def test_encrypt_plaintext_counts_rows_a_writer_holds_and_a_rerun_finishes(keys, owner, operator):
    """Make sure encrypt_plaintext skips a plaintext row a writer holds, reports it as
    remaining (the pass knew it skipped one, so it counted), and a rerun encrypts it."""
    expected = await seed(owner, None, keys.prefix, 20)
    rows = await my_rows(owner, keys)
    held = rows[3]
    async with owner.acquire() as writer:
        async with writer.transaction():
            await writer.execute("SELECT 1 FROM user_credentials WHERE id = $1 FOR UPDATE", held["id"])
            result = await encrypt_plaintext(operator, keys.new, batch_size=7)
    assert result.remaining == 1
    assert result.rows == len(expected) - 1
    left = await owner.fetchrow("SELECT api_key, secret_key FROM user_credentials WHERE id = $1", held["id"])
    assert not is_envelope(left["api_key"]) and not is_envelope(left["secret_key"])

    rerun = await encrypt_plaintext(operator, keys.new, batch_size=7)
    assert (rerun.rows, rerun.remaining) == (1, 0)
    assert all(is_envelope(row[c]) for row in await my_rows(owner, keys) for c in ("api_key", "secret_key"))
    await assert_readable(expected, keys.new)
