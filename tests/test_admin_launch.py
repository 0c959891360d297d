"""What `make run` prepares before it serves the admin: keys, role passwords, demo data."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys

import asyncpg
import pytest
from helpers import ROOT, run_piccolo

from orchestrator_db import CredentialNotFound, launch, user_scope
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import key_settings, reload_settings


@pytest.fixture
def local_dir(monkeypatch, tmp_path):
    """`make run`'s local directory moved to tmp_path, so no test touches the checkout's .local."""
    monkeypatch.setenv("ORCHESTRATOR_DB_LOCAL_DIR", str(tmp_path / ".local"))
    reload_settings()
    return tmp_path / ".local"


@pytest.fixture
def no_keys(monkeypatch, local_dir):
    """No key ring configured, and the development key file in the test's local directory."""
    monkeypatch.delenv("ORCHESTRATOR_DB_KEYS")
    monkeypatch.setenv("ORCHESTRATOR_DB_KEYS_FILE", "placeholder")
    monkeypatch.delenv("ORCHESTRATOR_DB_KEYS_FILE")
    reload_settings()
    return launch.dev_keys_file()


def test_dev_key_ring_is_generated_once_private(no_keys, monkeypatch, capsys) -> None:
    """Make sure a missing key ring is generated once into a 0600 file, announced loudly, and reused next time."""
    monkeypatch.setenv("ORCHESTRATOR_DB_ENV", "development")
    reload_settings()

    launch.ensure_dev_keys()
    first = no_keys.read_text()
    launch.ensure_dev_keys()

    assert stat.S_IMODE(no_keys.stat().st_mode) == 0o600
    assert no_keys.read_text() == first
    assert len(KeyRing.parse(first).key_ids) == 1
    assert "DEVELOPMENT key ring" in capsys.readouterr().out
    assert key_settings().keys_file == str(no_keys)


def test_production_never_generates_keys(no_keys, monkeypatch) -> None:
    """Make sure production without a configured key ring stops instead of generating one."""
    monkeypatch.setenv("ORCHESTRATOR_DB_ENV", "production")
    reload_settings()

    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_DB_KEYS"):
        launch.ensure_dev_keys()

    assert not no_keys.exists()


def test_role_passwords_required_with_database_url(monkeypatch) -> None:
    """Make sure a configured DATABASE_URL needs both role passwords from the environment."""
    monkeypatch.delenv("ORCHESTRATOR_DB_APP_PASSWORD", raising=False)
    monkeypatch.setenv("ORCHESTRATOR_DB_OPERATOR_PASSWORD", "op-secret")

    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_DB_APP_PASSWORD"):
        launch.role_passwords(embedded=False)

    monkeypatch.setenv("ORCHESTRATOR_DB_APP_PASSWORD", "app-secret")
    reload_settings()  # settings are read once; read the changed environment
    assert launch.role_passwords(embedded=False) == {
        "ORCHESTRATOR_DB_APP_PASSWORD": "app-secret",
        "ORCHESTRATOR_DB_OPERATOR_PASSWORD": "op-secret",
    }


def test_embedded_role_passwords_are_generated_once_private(monkeypatch, local_dir) -> None:
    """Make sure the embedded cluster's role passwords are generated once into a 0600 file and reused."""
    for name in launch.PASSWORD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    reload_settings()

    first = launch.role_passwords(embedded=True)
    again = launch.role_passwords(embedded=True)

    assert first == again
    assert all(len(password) >= 24 for password in first.values())
    assert stat.S_IMODE(launch.roles_file().stat().st_mode) == 0o600
    assert launch.roles_file() == local_dir / "roles.env"


@pytest.mark.asyncio
async def test_seed_demo_writes_through_the_public_api(test_db, monkeypatch) -> None:
    """Make sure `seed_demo` makes users, accounts and credentials the API reads back, one inactive and one expired."""
    monkeypatch.setenv("ORCHESTRATOR_DB_SEED_USERS_URL", test_db.owner_url)

    result = run_piccolo(test_db.app_url, "orchestrator_db", "seed_demo")

    assert "demo data ready" in result.stdout
    async with user_scope("demo-alice") as scope:
        usable = await scope.list_credentials()
    assert sorted(c.credential_type for c in usable) == ["alpaca", "polygon"]
    assert all(c.api_key.get_secret_value().startswith("AK-demo-") for c in usable)
    for user_id, credential_type, reason in (("demo-bob", "alpaca", "inactive"), ("demo-carol", "polygon", "expired")):
        with pytest.raises(CredentialNotFound) as refused:
            async with user_scope(user_id) as scope:
                await scope.get_credential(credential_type)
        assert refused.value.reason == reason


def _launch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`make run`'s code path (`python -m orchestrator_db.launch`) with only ``env`` as settings."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ORCHESTRATOR_DB_") and name not in ("DATABASE_URL", "ADMIN_PASSWORD")
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_db.launch", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _public_tables(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()


def _settings(test_db, tmp_path, **changes: str) -> dict[str, str]:
    settings = {
        "ORCHESTRATOR_DB_LOCAL_DIR": str(tmp_path / ".local"),
        "ORCHESTRATOR_DB_KEYS": test_db.keys,
        "ORCHESTRATOR_DB_APP_PASSWORD": "app-pw-4711",
        "ORCHESTRATOR_DB_OPERATOR_PASSWORD": "operator-pw-4711",
    }
    settings.update(changes)
    return {name: value for name, value in settings.items() if value}


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1, output
    for secret in ("app-pw-4711", "operator-pw-4711"):
        assert secret not in output
    return output


@pytest.mark.asyncio
async def test_run_without_role_passwords_stops_before_migrating(test_db, migrated_database, tmp_path) -> None:
    """Make sure `make run` with DATABASE_URL but no role passwords says so in one line and creates no table."""
    url = await migrated_database(migrate=False)

    result = await asyncio.to_thread(
        _launch, "--no-serve", **_settings(test_db, tmp_path, DATABASE_URL=url, ORCHESTRATOR_DB_APP_PASSWORD="")
    )

    assert "ORCHESTRATOR_DB_APP_PASSWORD" in _one_error_line(result)
    assert await _public_tables(url) == 0


@pytest.mark.asyncio
async def test_run_with_malformed_key_ring_stops_before_migrating(test_db, migrated_database, tmp_path) -> None:
    """Make sure `make run` with a key ring that does not parse names it in one line and creates no table."""
    url = await migrated_database(migrate=False)

    result = await asyncio.to_thread(
        _launch, "--no-serve", **_settings(test_db, tmp_path, DATABASE_URL=url, ORCHESTRATOR_DB_KEYS="k1:not-a-key")
    )

    assert "ORCHESTRATOR_DB_KEYS" in _one_error_line(result)
    assert await _public_tables(url) == 0


@pytest.mark.parametrize("database", ["postgres", "template1", ""])
def test_run_refuses_the_servers_own_database_before_connecting(test_db, tmp_path, database) -> None:
    """Make sure a DATABASE_URL naming the server's maintenance database (or none) is refused
    before any connection: the URL's port answers nothing, and the error is about the name."""
    url = f"postgresql://owner:owner-pw@127.0.0.1:1/{database}"

    result = _launch("--no-serve", **_settings(test_db, tmp_path, DATABASE_URL=url))

    output = _one_error_line(result)
    assert "DATABASE_URL names" in output and "owner-pw" not in output


@pytest.mark.asyncio
async def test_busy_admin_port_is_one_line_before_anything(test_db, migrated_database, tmp_path) -> None:
    """Make sure a taken admin port is one line naming ORCHESTRATOR_DB_ADMIN_PORT, before the URL is printed or a table made."""
    url = await migrated_database(migrate=False)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = await asyncio.to_thread(  # no key ring either: the port is the one thing said
            _launch,
            **_settings(
                test_db, tmp_path, DATABASE_URL=url, ORCHESTRATOR_DB_ADMIN_PORT=str(port), ORCHESTRATOR_DB_KEYS=""
            ),
        )

    output = _one_error_line(result)
    assert "ORCHESTRATOR_DB_ADMIN_PORT" in output and str(port) in output
    assert "admin: http" not in output
    assert await _public_tables(url) == 0
