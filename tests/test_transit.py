"""Keys wrapped by a real OpenBao Transit: the lifecycle, its failure modes, and no leaks.

Everything runs as it would in production: the key commands through the real
`piccolo` CLI as the operator role, and the app as separate processes
(tests/transit_worker.py) of the application role, so "restart the app"
means a new process. Each test has its own database: rotating keys here
must not touch the rest of the suite's rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from orchestrator_db.devdb.openbao import OpenBao
from orchestrator_db.devdb.provisioning import (
    ProvisionedDatabase,
    drop_provisioned_database,
    provision_database,
    run_piccolo,
)

pytestmark = pytest.mark.asyncio

WORKER = Path(__file__).with_name("transit_worker.py")
_NOT_TRANSIT = ("ORCHESTRATOR_DB_KEYS", "ORCHESTRATOR_DB_KEYS_FILE", "DATABASE_URL")


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    server = OpenBao()
    server.start()
    server.setup_transit()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def transit_db(test_db) -> AsyncIterator[ProvisionedDatabase]:
    """A database of its own per test: each test's data keys are wrapped by its own server."""
    db = await provision_database(test_db.server_url, "odb_transit")
    yield db
    await drop_provisioned_database(db)


@pytest_asyncio.fixture
async def owner_pool(transit_db) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(transit_db.owner_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


def _env(database_url: str, transit: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_TRANSIT}
    return {**env, **transit, "DATABASE_URL": database_url}


def operator(db: ProvisionedDatabase, bao: OpenBao, *args: str, check: bool = True, **extra: str):
    """A key command through the real CLI, as the operator role, with the Transit settings."""
    env = {**bao.transit_env(), **extra}
    return run_piccolo(
        db.operator_url,
        "orchestrator_db",
        *args,
        check=check,
        timeout=120,
        ORCHESTRATOR_DB_KEYS="",  # env_ignore_empty: unset for the child
        **env,
    )


class App:
    """One app process (the application role); ``ask`` sends a command and reads the answer."""

    def __init__(self, db: ProvisionedDatabase, transit: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=_env(db.app_url, transit),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise AssertionError(f"the app process died: {self.process.stderr.read()}")  # type: ignore[union-attr]
        return json.loads(line)

    def ask(self, **command: str) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> str:
        """Stop the process; return what it wrote to stderr (for the leak checks)."""
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=30)
        return self.process.stderr.read()  # type: ignore[union-attr]


async def _new_user(owner_pool: asyncpg.Pool, user_id: str) -> None:
    await owner_pool.execute(
        'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true)',
        user_id,
        "Transit User",
        f"{user_id}@example.test",
    )


async def _data_keys(owner_pool: asyncpg.Pool) -> dict[str, tuple[str, bool, int, bool]]:
    rows = await owner_pool.fetch(
        "SELECT key_id, state, is_primary, transit_key_version, wrapped_key IS NULL AS gone "
        "FROM orchestrator_db_data_keys"
    )
    return {r["key_id"]: (r["state"], r["is_primary"], r["transit_key_version"], r["gone"]) for r in rows}


async def _key_ids_in_use(owner_pool: asyncpg.Pool) -> set[str]:
    rows = await owner_pool.fetch("SELECT api_key, secret_key FROM user_credentials")
    return {value.split(".")[1] for row in rows for value in row}


async def test_transit_lifecycle(bao, transit_db, owner_pool) -> None:
    """Make sure a Transit data key serves reads and writes across restarts, Transit key
    rotation with rewrap, a new data key with rotate_keys, disabling and destroying."""
    transit = bao.transit_env()
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=dek1")
    assert (await _data_keys(owner_pool))["dek1"][:2] == ("enabled", False)  # prepared
    operator(transit_db, bao, "activate_key", "--key_id=dek1")

    await _new_user(owner_pool, "transit-alice")
    app = App(transit_db, transit)
    assert app.started == {"ready": True}
    assert app.ask(op="account", user="transit-alice") == {"ok": True}
    assert app.ask(op="put", user="transit-alice", type="alpaca", api_key="AK-1", secret_key="SK-1") == {"ok": True}
    app.close()
    assert await _key_ids_in_use(owner_pool) == {"dek1"}

    # Restart: a new process unwraps the key again and reads what the first wrote.
    app = App(transit_db, transit)
    assert app.ask(op="get", user="transit-alice", type="alpaca") == {"api_key": "AK-1", "secret_key": "SK-1"}
    app.close()

    # Rotate the Transit key and rewrap: only the wrapped DEK changes.
    stored_before = await owner_pool.fetch("SELECT api_key, secret_key FROM user_credentials")
    bao.client().secrets.transit.rotate_key("orchestrator_db", mount_point="transit")
    operator(transit_db, bao, "rewrap_keys")
    assert (await _data_keys(owner_pool))["dek1"][2] == 2
    assert await owner_pool.fetch("SELECT api_key, secret_key FROM user_credentials") == stored_before
    app = App(transit_db, transit)
    assert app.ask(op="get", user="transit-alice", type="alpaca")["api_key"] == "AK-1"
    app.close()

    # A new data key, activated, then rotate_keys moves the data to it.
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=dek2")
    operator(transit_db, bao, "activate_key", "--key_id=dek2")
    operator(transit_db, bao, "rotate_keys")
    assert await _key_ids_in_use(owner_pool) == {"dek2"}

    # Disable the old key: reads still work, as nothing needs it.
    operator(transit_db, bao, "set_key_state", "--key_id=dek1", "--state=disabled")
    app = App(transit_db, transit)
    assert app.ask(op="get", user="transit-alice", type="alpaca") == {"api_key": "AK-1", "secret_key": "SK-1"}
    app.close()

    # Destroy it: its wrapped form is gone for good.
    operator(transit_db, bao, "set_key_state", "--key_id=dek1", "--state=destroyed")
    keys = await _data_keys(owner_pool)
    assert keys["dek1"] == ("destroyed", False, 2, True)
    assert keys["dek2"][:2] == ("enabled", True)
    status = operator(transit_db, bao, "key_status")
    assert "dek1" in status.stdout and "destroyed" in status.stdout and "transit" in status.stdout


async def test_key_states_guard_their_transitions(bao, transit_db, owner_pool) -> None:
    """Make sure the active key cannot be disabled, an enabled or still-used key cannot be
    destroyed, and a destroyed key cannot come back."""
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=guard1")
    operator(transit_db, bao, "activate_key", "--key_id=guard1")
    refused = operator(transit_db, bao, "set_key_state", "--key_id=guard1", "--state=disabled", check=False)
    assert refused.returncode != 0 and "active key" in refused.stderr
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=guard2")
    refused = operator(transit_db, bao, "set_key_state", "--key_id=guard2", "--state=destroyed", check=False)
    assert refused.returncode != 0 and "disable" in refused.stderr
    operator(transit_db, bao, "set_key_state", "--key_id=guard2", "--state=disabled")
    operator(transit_db, bao, "set_key_state", "--key_id=guard2", "--state=destroyed")
    refused = operator(transit_db, bao, "set_key_state", "--key_id=guard2", "--state=enabled", check=False)
    assert refused.returncode != 0 and "cannot be undone" in refused.stderr
    assert (await _data_keys(owner_pool))["guard2"][0] == "destroyed"


async def test_outage_after_startup_stops_nothing(transit_db, owner_pool) -> None:
    """Make sure a started app keeps reading and writing with Transit down, and a new
    one fails at startup with a KeyConfigError naming the address setting."""
    server = OpenBao()
    server.start()
    server.setup_transit()
    try:
        transit = server.transit_env()
        operator(transit_db, server, "generate_key", "--provider=transit", "--key_id=outage1")
        operator(transit_db, server, "activate_key", "--key_id=outage1")
        await _new_user(owner_pool, "transit-bob")
        app = App(transit_db, transit)
        assert app.started == {"ready": True}
        server.stop()
        assert app.ask(op="account", user="transit-bob") == {"ok": True}
        assert app.ask(op="put", user="transit-bob", type="polygon", api_key="PK-9", secret_key="PS-9") == {"ok": True}
        assert app.ask(op="get", user="transit-bob", type="polygon") == {"api_key": "PK-9", "secret_key": "PS-9"}
        app.close()

        fresh = App(transit_db, transit)
        assert fresh.started["error"] == "KeyConfigError"
        assert "ORCHESTRATOR_DB_TRANSIT_ADDR" in fresh.started["message"]
        assert fresh.process.wait(timeout=30) == 3
    finally:
        server.stop()


async def test_failure_modes_are_typed_and_name_the_setting(bao, transit_db, owner_pool) -> None:
    """Make sure a wrong token, a missing Transit key, a data key Transit refuses to unwrap
    and no active key each stop startup with a KeyConfigError naming the fix, and no
    message shows the token or a wrapped key."""
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=fail1")
    operator(transit_db, bao, "activate_key", "--key_id=fail1")
    wrapped = await owner_pool.fetchval(
        "SELECT wrapped_key FROM orchestrator_db_data_keys WHERE key_id = 'fail1'"
    )

    wrong_token = App(transit_db, {**bao.transit_env(), "ORCHESTRATOR_DB_TRANSIT_TOKEN": "not-the-token"})
    assert wrong_token.started["error"] == "KeyConfigError"
    assert "ORCHESTRATOR_DB_TRANSIT_TOKEN" in wrong_token.started["message"]
    leaks = wrong_token.close() + json.dumps(wrong_token.started)
    assert "not-the-token" not in leaks and bao.token not in leaks

    missing_key = App(transit_db, {**bao.transit_env(), "ORCHESTRATOR_DB_TRANSIT_KEY": "no_such_key"})
    assert missing_key.started["error"] == "KeyConfigError"
    assert "ORCHESTRATOR_DB_TRANSIT_KEY" in missing_key.started["message"]
    missing_key.close()

    # A data key wrapped by another Transit key: Transit refuses to unwrap it.
    bao.client().secrets.transit.create_key("other", mount_point="transit")
    foreign = bao.client().secrets.transit.generate_data_key(
        "other", key_type="wrapped", bits=256, mount_point="transit"
    )["data"]["ciphertext"]
    await owner_pool.execute(
        "UPDATE orchestrator_db_data_keys SET wrapped_key = $1 WHERE key_id = 'fail1'", foreign
    )
    refused = App(transit_db, bao.transit_env())
    assert refused.started["error"] == "KeyConfigError"
    assert "not wrapped by this Transit key" in refused.started["message"]
    leaks = refused.close() + json.dumps(refused.started)
    assert foreign not in leaks and wrapped not in leaks
    await owner_pool.execute(
        "UPDATE orchestrator_db_data_keys SET wrapped_key = $1 WHERE key_id = 'fail1'", wrapped
    )

    # No active key: the primary flag went to a key nobody activated properly.
    await owner_pool.execute("UPDATE orchestrator_db_data_keys SET is_primary = false")
    no_active = App(transit_db, bao.transit_env())
    assert no_active.started["error"] == "KeyConfigError"
    assert "activate_key" in no_active.started["message"]
    no_active.close()
    await owner_pool.execute(
        "UPDATE orchestrator_db_data_keys SET is_primary = true WHERE key_id = 'fail1'"
    )


async def test_approle_login(bao, transit_db, owner_pool) -> None:
    """Make sure an app logs in to Transit with AppRole (role id and secret id) and serves
    reads; a wrong secret id is a KeyConfigError naming the AppRole settings."""
    role_id, secret_id = bao.app_role()
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=approle1")
    operator(transit_db, bao, "activate_key", "--key_id=approle1")
    await _new_user(owner_pool, "transit-carol")
    approle = {
        "ORCHESTRATOR_DB_KEY_PROVIDER": "transit",
        "ORCHESTRATOR_DB_TRANSIT_ADDR": bao.addr,
        "ORCHESTRATOR_DB_TRANSIT_ROLE_ID": role_id,
        "ORCHESTRATOR_DB_TRANSIT_SECRET_ID": secret_id,
    }
    app = App(transit_db, approle)
    assert app.started == {"ready": True}
    assert app.ask(op="account", user="transit-carol") == {"ok": True}
    assert app.ask(op="put", user="transit-carol", type="alpaca", api_key="AK-c", secret_key="SK-c") == {"ok": True}
    assert app.ask(op="get", user="transit-carol", type="alpaca")["api_key"] == "AK-c"
    app.close()

    wrong = App(transit_db, {**approle, "ORCHESTRATOR_DB_TRANSIT_SECRET_ID": "wrong-secret-id"})
    assert wrong.started["error"] == "KeyConfigError"
    assert "ORCHESTRATOR_DB_TRANSIT_ROLE_ID" in wrong.started["message"]
    assert "wrong-secret-id" not in wrong.close() + json.dumps(wrong.started)


def _readme_transit_commands() -> list[str]:
    """The README's transit command block, comments dropped, in order."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("In order, as the operator role", 1)[1]
    block = section.split("```", 2)[1]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [command for command in commands if command.startswith("piccolo ")]


async def test_readme_transit_commands_run_as_written(bao, transit_db, owner_pool) -> None:
    """Make sure the README's transit commands, pasted in order (with the ids filled in),
    move a running deployment from its old data key to a new one and retire the old."""
    operator(transit_db, bao, "generate_key", "--provider=transit", "--key_id=readme_old")
    operator(transit_db, bao, "activate_key", "--key_id=readme_old")
    await _new_user(owner_pool, "transit-dave")
    app = App(transit_db, bao.transit_env())
    assert app.ask(op="account", user="transit-dave") == {"ok": True}
    assert app.ask(op="put", user="transit-dave", type="alpaca", api_key="AK-d", secret_key="SK-d") == {"ok": True}
    app.close()

    commands = _readme_transit_commands()
    assert [c.split()[2] for c in commands] == [
        "generate_key", "activate_key", "rotate_keys", "key_status", "set_key_state", "set_key_state"
    ]
    new_key = None
    for command in commands:
        command = command.replace("<old>", "readme_old")
        if new_key:
            command = command.replace("<id>", new_key)
        words = command.split()
        assert words[:2] == ["piccolo", "orchestrator_db"]
        done = operator(transit_db, bao, *words[2:])
        if words[2] == "generate_key":
            new_key = done.stdout.split("prepared data key ", 1)[1].split()[0]
            restarted = App(transit_db, bao.transit_env())  # "restart the app's processes"
            assert restarted.started == {"ready": True}
            restarted.close()
    assert new_key is not None
    assert await _key_ids_in_use(owner_pool) == {new_key}
    keys = await _data_keys(owner_pool)
    assert keys["readme_old"][0] == "destroyed" and keys[new_key][:2] == ("enabled", True)
    app = App(transit_db, bao.transit_env())
    assert app.ask(op="get", user="transit-dave", type="alpaca") == {"api_key": "AK-d", "secret_key": "SK-d"}
    app.close()


async def test_no_token_or_key_in_logs_or_reprs(bao, caplog) -> None:
    """Make sure the Transit token, wrapped and unwrapped data keys never show in a repr
    or in any log line (every logger at DEBUG), while a real key round-trips."""
    import base64
    import logging

    from orchestrator_db.crypto.transit import TransitClient
    from orchestrator_db.settings import Settings, TransitSettings

    settings = TransitSettings(
        addr=bao.addr, mount="transit", key_name="orchestrator_db", token=bao.token,
        role_id=None, secret_id="a-secret-id", approle_mount="approle", timeout=5.0,
    )
    client = TransitClient(settings)
    with caplog.at_level(logging.DEBUG):
        wrapped = client.generate_data_key()
        key = client.unwrap(wrapped.ciphertext)
    assert len(key) == 32
    assert "/v1/transit/" in caplog.text  # the HTTP client did log: the scan below sees its lines
    everything = caplog.text + repr(settings) + repr(client) + repr(wrapped) + repr(
        Settings(ORCHESTRATOR_DB_TRANSIT_TOKEN=bao.token, ORCHESTRATOR_DB_TRANSIT_SECRET_ID="a-secret-id")
    )
    for secret in (bao.token, "a-secret-id", wrapped.ciphertext, base64.b64encode(key).decode()):
        assert secret not in everything
