"""What `make run` prepares before it serves the admin: keys, role passwords, demo data."""

from __future__ import annotations

import stat

import pytest
from helpers import run_piccolo

from orchestrator_db import CredentialNotFound, launch, user_scope
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import key_settings, reload_settings


@pytest.fixture
def no_keys(monkeypatch, tmp_path):
    """No key ring configured, and the development key file redirected to tmp_path."""
    monkeypatch.delenv("ORCHESTRATOR_DB_KEYS")
    monkeypatch.setenv("ORCHESTRATOR_DB_KEYS_FILE", "placeholder")
    monkeypatch.delenv("ORCHESTRATOR_DB_KEYS_FILE")
    monkeypatch.setattr(launch, "DEV_KEYS_FILE", tmp_path / ".local" / "dev-keys.txt")
    return launch.DEV_KEYS_FILE


def test_dev_key_ring_is_generated_once_private(no_keys, monkeypatch, capsys) -> None:
    """Make sure a missing key ring is generated once into a 0600 file, announced loudly, and reused next time."""
    monkeypatch.setenv("ORCHESTRATOR_DB_ENV", "development")

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


def test_embedded_role_passwords_are_generated_once_private(monkeypatch, tmp_path) -> None:
    """Make sure the embedded cluster's role passwords are generated once into a 0600 file and reused."""
    for name in launch.PASSWORD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "ROLES_FILE", tmp_path / ".local" / "roles.env")

    first = launch.role_passwords(embedded=True)
    again = launch.role_passwords(embedded=True)

    assert first == again
    assert all(len(password) >= 24 for password in first.values())
    assert stat.S_IMODE(launch.ROLES_FILE.stat().st_mode) == 0o600


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
