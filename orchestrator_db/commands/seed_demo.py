"""`piccolo orchestrator_db seed_demo`: a few users, accounts and credentials.

Everything after the users goes through the public API (``user_scope``), so
the rows are exactly what an application would write: validated, encrypted
and bound to their rows.
"""

from __future__ import annotations

import datetime
import secrets

import asyncpg

from orchestrator_db.commands._connect import run
from orchestrator_db.errors import AccountExists, ConfigurationError
from orchestrator_db.settings import configured_database_url, seed_users_database_url

#: (user id, name, e-mail, credential types, what happens to the first credential)
DEMO_USERS = (
    ("demo-alice", "Alice Demo", "alice@example.test", ("alpaca", "polygon"), None),
    ("demo-bob", "Bob Demo", "bob@example.test", ("alpaca",), "deactivated"),
    ("demo-carol", "Carol Demo", "carol@example.test", ("polygon",), "expired"),
)


async def _insert_users(users_url: str) -> None:
    """Insert the demo users as Better Auth would (skipping any already there)."""
    connection = await asyncpg.connect(users_url)
    try:
        await connection.executemany(
            'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true) '
            "ON CONFLICT DO NOTHING",
            [(user_id, name, email) for user_id, name, email, _, _ in DEMO_USERS],
        )
    finally:
        await connection.close()


def _demo_secret(prefix: str) -> str:
    # Random, so no real-looking key is ever committed or shared between installs.
    return f"{prefix}-demo-{secrets.token_urlsafe(18)}"


async def seed_demo_data(users_url: str) -> int:
    """Create the demo rows; returns how many credentials were written."""
    from orchestrator_db import connected, user_scope

    await _insert_users(users_url)
    written = 0
    now = datetime.datetime.now(datetime.timezone.utc)
    async with connected():
        for user_id, _, _, credential_types, twist in DEMO_USERS:
            async with user_scope(user_id) as scope:
                try:
                    await scope.create_account("Paper Account")
                except AccountExists:
                    pass
                for index, credential_type in enumerate(credential_types):
                    expires_at = None
                    if index == 0 and twist == "expired":
                        expires_at = now - datetime.timedelta(days=1)
                    await scope.put_credential(
                        credential_type,
                        api_key=_demo_secret("AK"),
                        secret_key=_demo_secret("SK"),
                        expires_at=expires_at,
                    )
                    written += 1
                if twist == "deactivated":
                    await scope.deactivate_credential(credential_types[0])
    return written


def seed_demo() -> None:
    """Create demo users, trading accounts and encrypted credentials.

    Accounts and credentials are written through the public API as the role
    in DATABASE_URL, which must be the application role (row-level security
    applies). Better Auth owns the "user" table, so the demo users are
    inserted through ORCHESTRATOR_DB_SEED_USERS_URL (a role that may insert
    into it, such as the table owner), default DATABASE_URL. Safe to run
    again: existing users and accounts are kept and the demo credentials get
    fresh random secrets. `make run ARGS=--seed-demo` runs it for you.
    """
    users_url = seed_users_database_url() or configured_database_url()

    async def main() -> int:
        if not users_url:
            raise ConfigurationError("DATABASE_URL is not set")
        return await seed_demo_data(users_url)

    written = run(main)
    emails = ", ".join(email for _, _, email, _, _ in DEMO_USERS)
    print(f"demo data ready: users {emails}; {written} credentials (secrets are random)")
