"""The one settings object: typed, read once, and never showing a secret."""

from __future__ import annotations

import pytest

from orchestrator_db.errors import ConfigurationError
from orchestrator_db.settings import (
    admin_settings,
    database_settings,
    get_settings,
    key_settings,
    reload_settings,
)


def test_no_secret_in_any_settings_repr(monkeypatch) -> None:
    """Make sure the database password, keys, role and admin passwords, the Transit token
    and the Better Auth secret never show in the reprs of the settings objects."""
    secrets = {
        "DATABASE_URL": "postgresql://app:db-pass-1@127.0.0.1:5432/app",
        "ORCHESTRATOR_DB_SEED_USERS_URL": "postgresql://owner:db-pass-2@127.0.0.1/app",
        "ORCHESTRATOR_DB_KEYS": "k1:" + "A" * 43 + "=",
        "ORCHESTRATOR_DB_APP_PASSWORD": "role-pass-3",
        "ORCHESTRATOR_DB_OPERATOR_PASSWORD": "role-pass-4",
        "ADMIN_PASSWORD": "admin-pass-5",
        "ORCHESTRATOR_DB_TRANSIT_TOKEN": "transit-token-6",
        "ORCHESTRATOR_DB_TRANSIT_SECRET_ID": "secret-id-7",
        "BETTER_AUTH_SECRET": "better-auth-secret-8-" + "x" * 20,
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    shown = " ".join(
        repr(item)
        for item in (get_settings(), database_settings(), key_settings(), admin_settings())
    )
    assert "statement_cache_size=100" in shown and "provider='env'" in shown  # real reprs
    for value in secrets.values():
        assert value not in shown
    for fragment in ("db-pass", "AAAAAAAA", "role-pass", "admin-pass", "transit-token"):
        assert fragment not in shown
    assert database_settings().url == secrets["DATABASE_URL"]  # still usable


def test_a_malformed_setting_names_the_variable_and_hides_the_value(monkeypatch) -> None:
    """Make sure a malformed value is a ConfigurationError naming its variable, not echoing it."""
    monkeypatch.setenv("ORCHESTRATOR_DB_POOL_MAX_SIZE", "ten-please")
    monkeypatch.setenv("ORCHESTRATOR_DB_ENV", "staging-secret-word")
    reload_settings()
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert "ORCHESTRATOR_DB_POOL_MAX_SIZE" in message and "ORCHESTRATOR_DB_ENV" in message
    assert "ten-please" not in message and "staging-secret-word" not in message
