"""The admin's secret form writes through the API's one write path: same checks, same locks, same errors."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest
import pytest_asyncio
from admin_support import (
    AdminServer,
    OperatorAccount,
    create_operator,
    login,
    start_admin_server,
    stop_admin_server,
)

from orchestrator_db import user_scope

if TYPE_CHECKING:
    from helpers import TestDatabase

pytestmark = pytest.mark.asyncio

FORM = "/api/forms/set-credential-secrets/"


@pytest.fixture(scope="module")
def server(test_db: TestDatabase) -> Iterator[AdminServer]:
    server = start_admin_server(test_db, "write-path")
    yield server
    stop_admin_server(server)


@pytest_asyncio.fixture(scope="module")
async def superuser(owner: asyncpg.Pool) -> OperatorAccount:
    return await create_operator(owner, superuser=True)


@pytest.fixture(scope="module")
def as_superuser(server: AdminServer, superuser: OperatorAccount) -> httpx.Client:
    return login(server, superuser)


@pytest.mark.parametrize("api_key, secret_key", [("   ", "sk-ok-7"), ("ak-ok-7", " \t ")])
async def test_form_refuses_whitespace_only_secrets(api_key, secret_key, as_superuser, user_with_account, owner):
    """Make sure the form refuses a secret that is empty after stripping, says why, echoes nothing and keeps the stored pair."""
    async with user_scope(user_with_account) as scope:
        await scope.put_credential("alpaca", "AK-working", "SK-working")
    before = await owner.fetchrow(
        "SELECT api_key, secret_key FROM public.user_credentials WHERE user_id = $1", user_with_account
    )

    answer = as_superuser.post(
        FORM,
        json={"user": user_with_account, "credential_type": "alpaca", "api_key": api_key, "secret_key": secret_key},
    )

    assert answer.status_code >= 400
    assert "whitespace" in answer.text
    assert "ak-ok-7" not in answer.text and "sk-ok-7" not in answer.text
    after = await owner.fetchrow(
        "SELECT api_key, secret_key FROM public.user_credentials WHERE user_id = $1", user_with_account
    )
    assert after == before


async def test_form_without_account_says_so(as_superuser, new_user, owner):
    """Make sure the form, like put_credential, refuses a user without an account and writes nothing."""
    user_id = await new_user()
    answer = as_superuser.post(
        FORM, json={"user": user_id, "credential_type": "alpaca", "api_key": "AK-1", "secret_key": "SK-1"}
    )
    assert answer.status_code >= 400 and "no trading account" in answer.text
    assert await owner.fetchval(
        "SELECT count(*) FROM public.user_credentials WHERE user_id = $1", user_id
    ) == 0


async def test_form_and_api_first_writes_race_to_one_row(as_superuser, user_with_account, owner):
    """Make sure concurrent first writes of one type through the form and the API all succeed and leave one row that decrypts."""
    written: list[tuple[str, str]] = []

    def through_form(n: int) -> None:
        pair = (f"AK-form-{n}-{secrets.token_hex(3)}", f"SK-form-{n}")
        answer = as_superuser.post(
            FORM,
            json={"user": user_with_account, "credential_type": "tiingo", "api_key": pair[0], "secret_key": pair[1]},
        )
        assert answer.status_code == 200, answer.text
        written.append(pair)

    async def through_api(n: int) -> None:
        pair = (f"AK-api-{n}", f"SK-api-{n}")
        async with user_scope(user_with_account) as scope:
            await scope.put_credential("tiingo", *pair)
        written.append(pair)

    await asyncio.gather(
        *(asyncio.to_thread(through_form, n) for n in range(3)),
        *(through_api(n) for n in range(3)),
    )

    assert len(written) == 6
    assert await owner.fetchval(
        "SELECT count(*) FROM public.user_credentials WHERE user_id = $1 AND credential_type = 'tiingo'",
        user_with_account,
    ) == 1
    async with user_scope(user_with_account) as scope:
        stored = await scope.get_credential("tiingo")
    assert (stored.api_key.get_secret_value(), stored.secret_key.get_secret_value()) in written
