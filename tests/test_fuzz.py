"""Hypothesis against the public API, as the application role.

Every input either round-trips exactly or is refused with a typed error, and
a refused call leaves nothing behind. Each test carries an oracle that says,
independently of the code under test, which inputs must be accepted, so a
store that refused everything would fail too.
"""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest
from helpers import SOAK_FACTOR
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator_db import (
    AccountNotFound,
    CredentialNotFound,
    UserNotFound,
    user_scope,
)
from orchestrator_db.crypto.envelopes import row_cells, unseal
from orchestrator_db.crypto.providers import get_key_ring

FUZZ = settings(
    max_examples=150 * SOAK_FACTOR,
    deadline=None,
    # new_user and owner are factories/pools: sharing them between examples is intended.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MEGABYTE = "x" * 1_000_000

SQL_METACHARACTERS = [
    "'", "''", '"', ";", "--", "/*", "*/", "\\", "\\'", "%", "_", "$1", "$$", "E'",
    "\\x00", "'; DROP TABLE user_credentials; --", "' OR '1'='1", "alpaca'; --", "a\\",
]
ODD_TEXT = ["\x00", "a\x00b", "é", "🔑", "\u202e", "Ω", "\ufeff", "\u0085", " ", "", "\ud800", "a\udfffb"]
_tricky = st.sampled_from(SQL_METACHARACTERS + ODD_TEXT)
TEXTS = st.one_of(
    st.text(max_size=64),  # any code point (no lone surrogates: those are in ODD_TEXT)
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=64),
    _tricky,
    st.lists(st.one_of(_tricky, st.text(max_size=8)), max_size=6).map("".join),
)
CREDENTIAL_TYPES = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,49}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{50,55}", fullmatch=True),
    TEXTS,
)
USER_IDS = st.one_of(
    TEXTS,
    st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    st.text(min_size=250, max_size=260, alphabet="ab'\\"),
    st.integers(),
    st.none(),
    st.binary(max_size=8),
    st.uuids(),
)


# Oracles: what the documented limits say, written without the code under test.


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def must_accept_credential_type(value: str) -> bool:
    return len(value) <= 50 and re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", value) is not None


def must_accept_secret(value: str) -> bool:
    """At most 4096 characters of storable text, not all of them white space."""
    return 1 <= len(value) <= 4096 and _utf8(value) and not all(ch.isspace() for ch in value)


def must_accept_user_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 255 and not _control(value) and _utf8(value)


# Unicode's White_Space property; Python's str.strip() also strips \x1c-\x1f.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + (
    "\u2028\u2029\u202f\u205f\u3000"
)


def stored_account_name(value: str) -> str | None:
    """The name as stored (surrounding white space stripped), or None if it must be refused."""
    name = value.strip(_WHITE_SPACE)
    if not name or len(name) > 255 or _control(name) or not _utf8(name):
        return None
    return name


def _input_free_wording(error: ValidationError) -> str:
    """What pydantic says for the same errors at the same places with no input at all."""
    reference = ValidationError.from_exception_data(
        error.title,
        [
            {"type": item["type"], "loc": item["loc"], "input": None, **(
                {"ctx": item["ctx"]} if "ctx" in item else {}
            )}
            for item in error.errors(include_url=False)
        ],
        hide_input=True,
    )
    return f"{reference}{reference!r}"


def _leaks(error: BaseException, *secrets: str) -> bool:
    """Whether the error shows any of the secrets, however short.

    A ValidationError must hide every input: its errors() may carry secret
    inputs only redacted, and its text may hold no more than the wording
    pydantic gives the same errors with no input (a one-letter secret such
    as 'a' is no leak for appearing in 'Value error').
    """
    shown = f"{error}{error!r}"
    if isinstance(error, ValidationError):
        shown_inputs = [
            item["input"]
            for item in error.errors()
            if item["loc"] and item["loc"][0] in {"api_key", "secret_key"}
        ]
        if "input_value" in str(error) or any(item != "**********" for item in shown_inputs):
            return True
        wording = _input_free_wording(error)
        return any(secret in shown and secret not in wording for secret in secrets)
    return any(secret in shown for secret in secrets)


async def _fresh_user_with_account(new_user) -> str:
    user_id = await new_user()
    async with user_scope(user_id) as scope:
        await scope.create_account("Fuzz Account")
    return user_id


async def _stored(owner: asyncpg.Pool, user_id: str) -> dict[str, tuple[object, str, str]]:
    """Every credential row of a user, as credential_type -> (id, api_key, secret_key), decrypted."""
    ring = get_key_ring()
    stored = {}
    for row in await owner.fetch("SELECT * FROM user_credentials WHERE user_id = $1", user_id):
        cell = row_cells(row)
        stored[row["credential_type"]] = (
            row["id"],
            unseal(ring, row["api_key"], cell["api_key"]),
            unseal(ring, row["secret_key"], cell["secret_key"]),
        )
    return stored


# put_credential ##############################################################


@pytest.mark.asyncio
@FUZZ
@given(
    credential_type=CREDENTIAL_TYPES,
    api_key=TEXTS,
    secret_key=TEXTS,
    new_api_key=TEXTS,
    new_secret_key=TEXTS,
)
@example("alpaca", MEGABYTE, "s", "a", "b")
@example("alpaca", "a", MEGABYTE, "a", MEGABYTE)
@example(MEGABYTE, "a", "b", "a", "b")
@example("alpaca", "x" * 4096, "\x00" * 4096, "x" * 4097, "b")
@example("a" * 50, "'; DROP TABLE user_credentials; --", "\\'\x00$$", "\ud800", "b")
async def test_put_credential_round_trips_or_refuses_cleanly(
    new_user, owner, credential_type, api_key, secret_key, new_api_key, new_secret_key
):
    """Make sure put_credential stores exactly what it is given or raises a typed error and stores nothing, also when replacing."""
    user_id = await _fresh_user_with_account(new_user)
    acceptable = must_accept_credential_type(credential_type) and all(
        map(must_accept_secret, (api_key, secret_key))
    )
    try:
        async with user_scope(user_id) as scope:
            returned = await scope.put_credential(credential_type, api_key, secret_key)
    except ValidationError as error:
        assert not _leaks(error, api_key, secret_key)
        assert not acceptable, f"valid input refused: {error!r}"
        assert await _stored(owner, user_id) == {}
        return
    assert acceptable, "invalid input accepted"
    assert returned.credential_type == credential_type
    assert (returned.api_key.get_secret_value(), returned.secret_key.get_secret_value()) == (
        api_key,
        secret_key,
    )
    assert await _stored(owner, user_id) == {credential_type: (returned.id, api_key, secret_key)}
    async with user_scope(user_id) as scope:
        [listed] = await scope.list_credentials()
        fetched = await scope.get_credential(credential_type)
    for credential in (listed, fetched):
        assert credential.id == returned.id
        assert credential.api_key.get_secret_value() == api_key
        assert credential.secret_key.get_secret_value() == secret_key

    # Replacing: all or nothing as well.
    replace_ok = must_accept_secret(new_api_key) and must_accept_secret(new_secret_key)
    try:
        async with user_scope(user_id) as scope:
            await scope.put_credential(credential_type, new_api_key, new_secret_key)
    except ValidationError as error:
        assert not _leaks(error, api_key, secret_key, new_api_key, new_secret_key)
        assert not replace_ok, f"valid replacement refused: {error!r}"
        assert await _stored(owner, user_id) == {credential_type: (returned.id, api_key, secret_key)}
        return
    assert replace_ok, "invalid replacement accepted"
    assert await _stored(owner, user_id) == {
        credential_type: (returned.id, new_api_key, new_secret_key)
    }


# User ids and account names ##################################################


async def _register(owner: asyncpg.Pool, user_id: object) -> bool:
    """Make user_id a Better Auth user, if PostgreSQL can store it at all."""
    if not isinstance(user_id, str) or "\x00" in user_id or not _utf8(user_id):
        return False
    if len(user_id.encode()) > 2000:  # beyond what the "user" table's btree index can hold
        return False
    await owner.execute(
        'INSERT INTO "user" (id, name, email, "emailVerified") VALUES ($1, $2, $3, true)',
        user_id,
        "Fuzz User",
        f"{uuid.uuid4()}@example.test",
    )
    return True


async def _accounts_of(owner: asyncpg.Pool, user_id: str) -> list[tuple[str, str]]:
    rows = await owner.fetch("SELECT user_id, account_name FROM user_accounts WHERE user_id = $1", user_id)
    return [tuple(row) for row in rows]


@pytest.mark.asyncio
@FUZZ
@given(user_id=USER_IDS, register=st.booleans(), account_name=TEXTS)
@example(MEGABYTE, True, "Paper")
@example("o'brien\\'; DROP TABLE user_accounts; --", True, "Paper")
@example("\\\\'\\", True, "  Paper  ")
@example("\ud800", True, "Paper")
@example("", True, "Paper")
@example("user", True, MEGABYTE)
@example("名前-🔑", True, "\u3000Paper\u3000")
async def test_user_ids_and_account_names_round_trip_or_refuse_cleanly(
    owner, user_id, register, account_name
):
    """Make sure any user id and account name either round-trips exactly through a scope or is refused with a typed error, writing nothing."""
    registered = register and await _register(owner, user_id)
    try:
        await _open_scope_and_create_account(owner, user_id, registered, account_name)
    finally:
        if registered:  # the shared database must not keep odd ids such as ''
            await owner.execute('DELETE FROM "user" WHERE id = $1', user_id)


async def _open_scope_and_create_account(
    owner: asyncpg.Pool, user_id: object, registered: bool, account_name: str
) -> None:
    if not must_accept_user_id(user_id):
        expected = TypeError if not isinstance(user_id, str) else ValueError
        with pytest.raises(expected):
            async with user_scope(user_id):
                pytest.fail("a scope opened for an invalid user id")
        if registered:
            assert await _accounts_of(owner, user_id) == []
        return

    name = stored_account_name(account_name)
    try:
        async with user_scope(user_id) as scope:
            created = await scope.create_account(account_name)
    except (ValidationError, UserNotFound) as error:
        if name is None:
            assert isinstance(error, ValidationError), repr(error)
        else:
            assert not registered and isinstance(error, UserNotFound), repr(error)
        assert await _accounts_of(owner, user_id) == []
        return
    assert registered and name is not None, "an account was created that must not have been"
    assert (created.user_id, created.account_name) == (user_id, name)

    async with user_scope(user_id) as scope:
        assert (await scope.get_account()).account_name == name
        await scope.put_credential("alpaca", f"api-{user_id}", f"secret-{user_id}")
    async with user_scope(user_id) as scope:
        credential = await scope.get_credential("alpaca")
    assert credential.user_id == user_id
    assert credential.api_key.get_secret_value() == f"api-{user_id}"
    assert await _accounts_of(owner, user_id) == [(user_id, name)]


# Reads, deactivation and deletion by credential type ########################


@pytest.mark.asyncio
@FUZZ
@given(credential_type=CREDENTIAL_TYPES)
@example("alpaca")
@example("alpaca'; DELETE FROM user_credentials; --")
@example("%")
@example(MEGABYTE)
async def test_lookups_by_credential_type_touch_only_that_type(new_user, owner, credential_type):
    """Make sure get, deactivate and delete with any credential type act on exactly that type or raise a typed error."""
    user_id = await _fresh_user_with_account(new_user)
    async with user_scope(user_id) as scope:
        await scope.put_credential("alpaca", "api-kept", "secret-kept")
        await scope.put_credential("polygon", "api-other", "secret-other")
    before = await _stored(owner, user_id)
    valid = must_accept_credential_type(credential_type)
    present = credential_type in before

    for operation in ("get_credential", "deactivate_credential", "delete_credential"):
        try:
            async with user_scope(user_id) as scope:
                result = await getattr(scope, operation)(credential_type)
        except (ValidationError, CredentialNotFound, AccountNotFound) as error:
            assert not present, f"{operation} missed an existing credential: {error!r}"
            assert isinstance(error, CredentialNotFound) == valid, repr(error)
            continue
        assert present, f"{operation} succeeded on a missing credential"
        if operation == "get_credential":
            assert result.api_key.get_secret_value() == before[credential_type][1]

    after = await _stored(owner, user_id)
    expected = {key: value for key, value in before.items() if key != credential_type}
    assert after == expected
