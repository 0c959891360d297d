"""authenticate() against the real Better Auth 1.7: every case beside its own verdict.

Each case signs users up and in through Better Auth's API (tests/better_auth),
then asks both Better Auth (auth.api.getSession) and authenticate() about the
same cookie or bearer token. They agree, except where we are stricter on
purpose: the cookie cache, unsigned bearer tokens, and a failing bearer
header beside a valid cookie.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import asyncpg
import pytest
from better_auth_support import BetterAuthConfig, new_secret
from helpers import grant_roles, run_piccolo

from orchestrator_db import (
    ConfigurationError,
    NotAuthenticated,
    authenticate,
    user_scope,
)
from orchestrator_db.sessions import session_settings, sign
from orchestrator_db.settings import get_settings, use_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION_COOKIE = "better-auth.session_token"


async def refused(reason: str, **headers: str | None) -> None:
    with pytest.raises(NotAuthenticated) as caught:
        await authenticate(**headers)
    assert caught.value.reason == reason


def with_cookie(cookie_header: str, value: str) -> str:
    """The cookie header with the session cookie's value replaced."""
    parts = []
    for part in cookie_header.split("; "):
        name, _, old = part.partition("=")
        parts.append(f"{name}={value}" if name.endswith(SESSION_COOKIE) else part)
    return "; ".join(parts)


# Accepted ####################################################################


async def test_real_cookie_and_bearer_token_give_the_user_id(better_auth, config) -> None:
    """Make sure Better Auth's own cookie and bearer token, from sign-up and from
    sign-in, authenticate as the user it signed in, as Better Auth itself says."""
    password = "correct horse 1"
    email = "cookie-owner-" + new_secret()[:8].lower() + "@example.test"
    signed_up = await better_auth.sign_up(config, email, password)
    signed_in = await better_auth.sign_in(config, email, password)
    assert signed_in.user_id == signed_up.user_id
    for issued in (signed_up, signed_in):
        assert issued.bearer
        bearer = f"Bearer {issued.bearer}"
        assert await better_auth.session_user(config, cookie=issued.cookie) == issued.user_id
        assert await better_auth.session_user(config, authorization=bearer) == issued.user_id
        assert await authenticate(cookie=issued.cookie) == issued.user_id
        assert await authenticate(authorization=bearer) == issued.user_id
        assert await authenticate(authorization="bEaReR   " + issued.bearer) == issued.user_id
    # Two sessions, two tokens: each is its own.
    assert signed_up.cookie_value() != signed_in.cookie_value()


async def test_secure_cookie_name_under_https(better_auth, test_db, secret) -> None:
    """Make sure the __Secure- cookie Better Auth sets behind an https baseURL is read."""
    config = BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": secret}, secure=True)
    issued = await better_auth.sign_up(config)
    assert issued.cookie.startswith("__Secure-" + SESSION_COOKIE + "=")
    assert await better_auth.session_user(config, cookie=issued.cookie) == issued.user_id
    assert await authenticate(cookie=issued.cookie) == issued.user_id


async def test_the_cookie_signature_is_better_auths(better_auth, config, secret) -> None:
    """Make sure our signature of the token Better Auth issued is byte for byte the one
    in its cookie (percent-encoded on the wire)."""
    issued = await better_auth.sign_up(config)
    token_and_signature = issued.bearer
    assert token_and_signature is not None
    token, _, signature = token_and_signature.rpartition(".")
    assert sign(token, secret) == signature
    # On the wire it is encodeURIComponent(token.signature).
    assert issued.cookie_value() == quote(token_and_signature, safe="-_.!~*'()")


# Refused #####################################################################


@pytest.mark.parametrize("part", ["token", "signature"])
async def test_tampered_token_or_signature_is_refused(better_auth, config, part) -> None:
    """Make sure changing one character of the token or of the signature is refused
    by both."""
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    token, _, signature = issued.bearer.rpartition(".")
    if part == "token":
        token = token[:-1] + ("A" if token[-1] != "A" else "B")
    else:
        signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    tampered = with_cookie(issued.cookie, f"{token}.{signature}")
    assert await better_auth.session_user(config, cookie=tampered) is None
    await refused("bad_signature", cookie=tampered)
    bearer = f"Bearer {token}.{signature}"
    assert await better_auth.session_user(config, authorization=bearer) is None
    await refused("bad_signature", authorization=bearer)


async def test_cookie_signed_with_another_secret_is_refused(better_auth, test_db, config) -> None:
    """Make sure a real cookie from a Better Auth with another secret is refused by both."""
    other = BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": new_secret()})
    issued = await better_auth.sign_up(other)
    assert await better_auth.session_user(other, cookie=issued.cookie) == issued.user_id
    assert await better_auth.session_user(config, cookie=issued.cookie) is None
    await refused("bad_signature", cookie=issued.cookie)


async def test_signed_out_session_is_refused(better_auth, config, owner) -> None:
    """Make sure a session Better Auth signed out (its row deleted) is refused by both."""
    issued = await better_auth.sign_up(config)
    assert await authenticate(cookie=issued.cookie) == issued.user_id
    await better_auth.sign_out(config, issued.cookie)
    assert not await owner.fetchval(
        'SELECT count(*) FROM "session" WHERE "userId" = $1', issued.user_id
    )
    assert await better_auth.session_user(config, cookie=issued.cookie) is None
    await refused("unknown_session", cookie=issued.cookie)
    await refused("unknown_session", authorization=f"Bearer {issued.bearer}")


async def test_expired_session_is_refused(better_auth, config, owner) -> None:
    """Make sure a session whose expiresAt has passed (by the database clock) is refused
    by both; ours is asked first, because Better Auth deletes the row it refuses."""
    issued = await better_auth.sign_up(config)
    await owner.execute(
        'UPDATE "session" SET "expiresAt" = now() - interval \'1 second\' WHERE "userId" = $1',
        issued.user_id,
    )
    await refused("expired", cookie=issued.cookie)
    await refused("expired", authorization=f"Bearer {issued.bearer}")
    assert await better_auth.session_user(config, cookie=issued.cookie) is None


async def test_rotated_secret_refuses_old_cookies_and_accepts_new(better_auth, test_db) -> None:
    """Make sure that after BETTER_AUTH_SECRETS puts a new secret first, cookies signed
    with the old one are refused and new ones accepted, by both."""
    old, new = new_secret(), new_secret()
    before = BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": old})
    after = BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRETS": f"2:{new}, 1:{old}"})
    email, password = f"rotated-{new[:8].lower()}@example.test", "correct horse 1"
    old_cookie = (await better_auth.sign_up(before, email, password)).cookie
    new_issued = await better_auth.sign_in(after, email, password)

    use_settings(better_auth_secret=old)
    assert await authenticate(cookie=old_cookie) == new_issued.user_id

    use_settings(better_auth_secrets=f"2:{new}, 1:{old}", better_auth_secret=None)
    assert await better_auth.session_user(after, cookie=old_cookie) is None
    await refused("bad_signature", cookie=old_cookie)
    assert await better_auth.session_user(after, cookie=new_issued.cookie) == new_issued.user_id
    assert await authenticate(cookie=new_issued.cookie) == new_issued.user_id


async def test_user_deleted_through_better_auth_is_refused_and_our_rows_go(
    better_auth, config, owner
) -> None:
    """Make sure deleting the user through Better Auth ends their sessions for both,
    and takes their account and credentials with it (cascade)."""
    password = "correct horse 1"
    issued = await better_auth.sign_up(
        config, f"leaver-{new_secret()[:8].lower()}@example.test", password
    )
    user_id = await authenticate(cookie=issued.cookie)
    async with user_scope(user_id) as scope:
        await scope.create_account("Paper Account")
        await scope.put_credential("alpaca", "AKLEAVER000001", "leaver-secret-0001")
    await better_auth.delete_user(config, issued.cookie, password)
    assert await better_auth.session_user(config, cookie=issued.cookie) is None
    await refused("unknown_session", cookie=issued.cookie)
    for table in ("user_accounts", "user_credentials"):
        assert await owner.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id) == 0
    assert await owner.fetchval('SELECT count(*) FROM "user" WHERE id = $1', user_id) == 0


async def test_missing_and_malformed(better_auth, config, secret) -> None:
    """Make sure no session cookie is 'missing' and a value Better Auth would not parse
    (no dot, an unpadded signature) is 'malformed', with Better Auth refusing it too."""
    await refused("missing")
    await refused("missing", cookie="theme=dark; better-auth.other=1")
    await refused("missing", authorization="Basic dXNlcjpwYXNz")
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    token, _, signature = issued.bearer.rpartition(".")
    for value in (token, f"{token}.{signature.rstrip('=')}", f".{signature}", "%E0%A4%A"):
        cookie = with_cookie(issued.cookie, value)
        assert await better_auth.session_user(config, cookie=cookie) is None
        await refused("malformed", cookie=cookie)
    await refused("malformed", authorization="Bearer ")
    use_settings(get_settings(), bearer_allow_unsigned=True)
    await refused("malformed", authorization="Bearer nul\x00token")
    await refused("malformed", authorization="Bearer " + "t" * 2000)


async def test_undecodable_tokens_are_malformed_and_never_quoted(secret) -> None:
    """Make sure a token with a lone surrogate (what a server decoding headers with
    surrogateescape hands over) is 'malformed', signed or bare, and no error holds it."""
    token = "SECRETTOKEN" + "\udcff" + "x" * 20
    signature = "A" * 43 + "="
    for allow_unsigned in (False, True):
        use_settings(get_settings(), bearer_allow_unsigned=allow_unsigned)
        bare = "malformed" if allow_unsigned else "bad_signature"  # unsigned: refused first
        for headers, reason in (
            ({"authorization": f"Bearer {token}.{signature}"}, "malformed"),
            ({"authorization": f"Bearer {token}"}, bare),
            ({"cookie": f"better-auth.session_token={token}.{signature}"}, "malformed"),
        ):
            with pytest.raises(NotAuthenticated) as caught:
                await authenticate(**headers)
            assert caught.value.reason == reason
            assert "SECRETTOKEN" not in f"{caught.value}{caught.value!r}"


# Stricter than Better Auth, on purpose ######################################


async def test_unsigned_bearer_token_needs_the_setting(better_auth, config) -> None:
    """Make sure a bare token, which Better Auth's bearer plugin accepts by default, is
    refused unless ORCHESTRATOR_DB_BEARER_ALLOW_UNSIGNED is set."""
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    bare = "Bearer " + issued.bearer.rpartition(".")[0]
    assert await better_auth.session_user(config, authorization=bare) == issued.user_id
    await refused("bad_signature", authorization=bare)
    use_settings(get_settings(), bearer_allow_unsigned=True)
    assert await authenticate(authorization=bare) == issued.user_id


async def test_a_failing_bearer_header_is_not_replaced_by_the_cookie(better_auth, config) -> None:
    """Make sure a bad Authorization: Bearer is refused even beside a valid cookie
    (Better Auth ignores the header and uses the cookie)."""
    issued = await better_auth.sign_up(config)
    bad = "Bearer " + "x" * 32 + "." + sign("x" * 32, new_secret())
    assert await better_auth.session_user(config, cookie=issued.cookie, authorization=bad) == (
        issued.user_id
    )
    await refused("bad_signature", cookie=issued.cookie, authorization=bad)


async def test_cookie_cache_is_never_trusted(better_auth, test_db, secret, owner) -> None:
    """Make sure a session revoked in the database is refused at once, while Better Auth
    with cookieCache on still accepts it from its session_data cookie."""
    config = BetterAuthConfig(test_db.owner_url, {"BETTER_AUTH_SECRET": secret}, cookie_cache=True)
    issued = await better_auth.sign_up(config)
    assert "better-auth.session_data=" in issued.cookie
    assert await authenticate(cookie=issued.cookie) == issued.user_id
    await owner.execute('DELETE FROM "session" WHERE "userId" = $1', issued.user_id)
    assert await better_auth.session_user(config, cookie=issued.cookie) == issued.user_id
    await refused("unknown_session", cookie=issued.cookie)


# The secret ##################################################################


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"better_auth_secret": "too-short-0123456789"},
        {"better_auth_secret": "better-auth-secret-12345678901234567890"},
        {"better_auth_secrets": "no-version-" + "s" * 40},
        {"better_auth_secrets": "1:"},
    ],
    ids=["missing", "short", "better-auth-default", "secrets-no-version", "secrets-empty"],
)
async def test_a_missing_or_weak_secret_is_a_configuration_error(changes) -> None:
    """Make sure authenticate raises ConfigurationError, naming the variable and never
    its value, when the secret is missing, short, Better Auth's default or malformed."""
    use_settings(
        get_settings(),
        **{"better_auth_secret": None, "better_auth_secrets": None, "auth_secret": None, **changes},
    )
    with pytest.raises(ConfigurationError) as caught:
        await authenticate(cookie=f"{SESSION_COOKIE}=a.b")
    message = str(caught.value) + repr(caught.value)
    assert "BETTER_AUTH_SECRET" in message
    for value in changes.values():
        assert value not in message


async def test_auth_secret_is_read_like_better_auth(better_auth, test_db) -> None:
    """Make sure AUTH_SECRET, Better Auth's last fallback, signs for both."""
    value = new_secret()
    config = BetterAuthConfig(test_db.owner_url, {"AUTH_SECRET": value})
    issued = await better_auth.sign_up(config)
    use_settings(get_settings(), auth_secret=value, better_auth_secret=None, better_auth_secrets=None)
    assert await better_auth.session_user(config, cookie=issued.cookie) == issued.user_id
    assert await authenticate(cookie=issued.cookie) == issued.user_id


# The database side ###########################################################


async def test_application_role_cannot_read_sessions_but_lookup_works(
    better_auth, config, test_db
) -> None:
    """Make sure that, as the application role, SELECT * FROM "session" is refused, while
    the lookup function answers for a token it holds."""
    issued = await better_auth.sign_up(config)
    connection = await asyncpg.connect(test_db.app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.fetch('SELECT * FROM "session"')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.fetch('SELECT token FROM public."session" LIMIT 1')
        token = issued.cookie_value().replace("%2B", "+").replace("%2F", "/").replace("%3D", "=")
        token = token.rpartition(".")[0]
        rows = await connection.fetch(
            "SELECT user_id, expired FROM orchestrator_db_session_user($1)", token
        )
        assert [tuple(row) for row in rows] == [(issued.user_id, False)]
    finally:
        await connection.close()
    assert await authenticate(cookie=issued.cookie) == issued.user_id


async def test_lookup_function_is_definer_pinned_and_executable_by_the_app_role_only(
    owner, test_db
) -> None:
    """Make sure the function is SECURITY DEFINER with search_path pinned, and only the
    application role (not PUBLIC, not the operator) may execute it."""
    row = await owner.fetchrow(
        "SELECT prosecdef, proconfig, provolatile, "
        "has_function_privilege($1, p.oid, 'EXECUTE') AS app, "
        "has_function_privilege($2, p.oid, 'EXECUTE') AS operator, "
        "p.proacl::text[] AS acl "
        "FROM pg_proc p WHERE p.oid = 'public.orchestrator_db_session_user(text)'::regprocedure",
        test_db.app_role,
        test_db.operator_role,
    )
    assert row["prosecdef"] is True
    assert row["proconfig"] == ["search_path=pg_catalog, pg_temp"]
    assert row["app"] is True
    assert row["operator"] is False
    assert not [entry for entry in row["acl"] if entry.startswith("=")]  # no PUBLIC grant


async def test_lookup_uses_the_database_clock(better_auth, config, owner) -> None:
    """Make sure expiry is judged by now() on the server: a session that the database
    says ends in the future is accepted, one that ended is refused, whatever this
    process's clock says."""
    issued = await better_auth.sign_up(config)
    await owner.execute(
        'UPDATE "session" SET "expiresAt" = now() + interval \'1 minute\' WHERE "userId" = $1',
        issued.user_id,
    )
    assert await authenticate(cookie=issued.cookie) == issued.user_id
    await owner.execute(
        'UPDATE "session" SET "expiresAt" = now() - interval \'1 millisecond\' '
        'WHERE "userId" = $1',
        issued.user_id,
    )
    await refused("expired", cookie=issued.cookie)


# Migration orders ############################################################


async def _lookup_as_app_role(url: str, token: str) -> list[tuple]:
    connection = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.fetch('SELECT * FROM "session"')
        rows = await connection.fetch("SELECT * FROM orchestrator_db_session_user($1)", token)
        return [tuple(row) for row in rows]
    finally:
        await connection.close()


@pytest.mark.parametrize("first", ["better_auth", "orchestrator_db"])
async def test_both_migration_orders(better_auth, test_db, migrated_database, first) -> None:
    """Make sure session lookup works whether Better Auth's migrations ran before ours
    or after (then "session" did not exist when our function was made)."""
    from orchestrator_db.devdb.urls import with_credentials

    owner_url = await migrated_database(migrate=False)
    config = BetterAuthConfig(owner_url, {"BETTER_AUTH_SECRET": new_secret()})
    if first == "better_auth":
        created = await better_auth.migrate(config)
        assert {"user", "session"} <= set(created["created"])
    await asyncio.to_thread(run_piccolo, owner_url, "migrations", "forwards", "all")
    if first == "orchestrator_db":
        created = await better_auth.migrate(config)
        assert "session" in created["created"] and "user" not in created["created"]
    await asyncio.to_thread(grant_roles, test_db, owner_url)
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    app_url = with_credentials(owner_url, test_db.app_role, test_db.app_password)
    token = issued.bearer.rpartition(".")[0]
    assert await _lookup_as_app_role(app_url, token) == [(issued.user_id, False)]
    assert await _lookup_as_app_role(app_url, "no-such-token") == []


# Hygiene #####################################################################


async def test_no_token_cookie_or_secret_in_errors_logs_or_reprs(
    better_auth, config, secret, caplog
) -> None:
    """Make sure the token, the cookie and the secret never appear in a log line, an
    exception message or a repr, whatever the outcome."""
    caplog.set_level(logging.DEBUG)
    issued = await better_auth.sign_up(config)
    assert issued.bearer is not None
    token = issued.bearer.rpartition(".")[0]
    texts = [repr(session_settings()), str(session_settings()), repr(get_settings())]
    await better_auth.sign_out(config, issued.cookie)
    attempts = [
        {"cookie": issued.cookie},
        {"authorization": f"Bearer {issued.bearer}"},
        {"authorization": f"Bearer {token}"},
        {"cookie": with_cookie(issued.cookie, token + ".x")},
    ]
    for headers in attempts:
        with pytest.raises(NotAuthenticated) as caught:
            await authenticate(**headers)
        texts += [str(caught.value), repr(caught.value), repr(caught.value.args)]
    use_settings(get_settings(), better_auth_secret=secret[:20])
    with pytest.raises(ConfigurationError) as weak:
        await authenticate(cookie=issued.cookie)
    texts += [str(weak.value), repr(weak.value)]
    texts += [record.getMessage() for record in caplog.records]
    joined = "\n".join(texts)
    for needle in (token, secret, secret[:20], issued.bearer, issued.cookie_value()):
        assert needle not in joined
