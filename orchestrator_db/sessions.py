"""A Better Auth request -> a verified user id.

Better Auth (Node) signs users in and stores their sessions in the same
database. A Python backend receives only the ``Cookie`` and
``Authorization`` headers; :func:`authenticate` turns them into the user id
that :func:`orchestrator_db.user_scope` takes, or raises
:class:`NotAuthenticated`. The rules are Better Auth 1.7's own (see
``better-call/dist/context.mjs`` ``getSignedCookie`` and
``better-auth/dist/plugins/bearer/index.mjs``), stricter in three places:

- the ``session_data`` cookie cache is never read: a session deleted or
  expired in the database is refused at once;
- a bearer token needs its signature unless
  ``ORCHESTRATOR_DB_BEARER_ALLOW_UNSIGNED`` is set;
- an ``Authorization: Bearer`` header that fails is refused, never replaced
  by the request's cookie.

The signature is ``base64(HMAC-SHA256(utf8(secret), utf8(token)))``, checked
in constant time. The session row is read through the SECURITY DEFINER
function ``orchestrator_db_session_user`` (see its migration): the
application role has no grant on ``"session"``, and expiry is judged by the
database clock in the same statement.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import asyncpg

from orchestrator_db.connection import DRIVER_ERRORS, acquire, chained, database_error, release
from orchestrator_db.engine import get_engine
from orchestrator_db.errors import ConfigurationError, NotAuthenticated
from orchestrator_db.settings import get_settings

#: Better Auth warns below this length; we refuse (settings are ours to check).
MIN_SECRET_LENGTH = 32
#: Better Auth's built-in fallback (context/create-context.mjs): public, never a secret.
BETTER_AUTH_DEFAULT_SECRET = "better-auth-secret-12345678901234567890"
#: Base64 of 32 bytes, standard alphabet, padded: what getSignedCookie requires.
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{43}=")
#: Far above Better Auth's 32-character tokens; a longer value is not one.
_MAX_VALUE_LENGTH = 1024
#: No token holds these (and PostgreSQL text cannot hold NUL).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECURE_PREFIX = "__Secure-"

_LOOKUP = "SELECT user_id, expired FROM public.orchestrator_db_session_user($1)"


@dataclass(frozen=True)
class SessionSettings:
    """What authenticate needs; the secret never shows in a repr."""

    secret: str = field(repr=False)
    cookie_name: str
    bearer_allow_unsigned: bool


def _current_secret() -> str:
    """The secret Better Auth signs with, read from the variables it reads, in its order."""
    settings = get_settings()
    if settings.better_auth_secrets is not None:
        # "<version>:<secret>,...": the first entry is the current one
        # (context/secret-utils.mjs parseSecretsEnv); only it signs cookies.
        first = settings.better_auth_secrets.get_secret_value().split(",")[0].strip()
        version, colon, value = first.partition(":")
        if not colon or not version.strip().isdigit() or not value.strip():
            raise ConfigurationError(
                'BETTER_AUTH_SECRETS is malformed: expected "<version>:<secret>,..." '
                "with the current secret first"
            )
        secret, variable = value.strip(), "BETTER_AUTH_SECRETS"
    elif settings.better_auth_secret is not None:
        secret, variable = settings.better_auth_secret.get_secret_value(), "BETTER_AUTH_SECRET"
    elif settings.auth_secret is not None:
        secret, variable = settings.auth_secret.get_secret_value(), "AUTH_SECRET"
    else:
        raise ConfigurationError(
            "no Better Auth secret: set BETTER_AUTH_SECRET (or BETTER_AUTH_SECRETS) "
            "to the value the Better Auth server uses"
        )
    if secret == BETTER_AUTH_DEFAULT_SECRET:
        raise ConfigurationError(
            f"{variable} is Better Auth's public default secret; generate a real one "
            "(openssl rand -base64 32) and set it on both servers"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(
            f"{variable}'s current secret is shorter than {MIN_SECRET_LENGTH} characters; "
            "generate one with `openssl rand -base64 32` and set it on both servers"
        )
    return secret


def session_settings() -> SessionSettings:
    """The session settings; a missing, default or short secret is a ConfigurationError."""
    settings = get_settings()
    return SessionSettings(
        secret=_current_secret(),
        cookie_name=settings.session_cookie_name,
        bearer_allow_unsigned=settings.bearer_allow_unsigned,
    )


def sign(token: str, secret: str) -> str:
    """Better Auth's signature of a token: base64(HMAC-SHA256(secret, token)), padded."""
    digest = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _percent_decoded(value: str) -> str:
    """decodeURIComponent when the value holds a '%', as better-call's tryDecode does."""
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise NotAuthenticated("malformed") from None


def _cookie(header: str, name: str) -> str | None:
    """The first cookie of that name (better-call's parseCookies keeps the first)."""
    for part in header.split(";"):
        key, equals, value = part.partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if value.startswith('"'):
                value = value[1:-1]
            return value
    return None


def _well_formed(token: str) -> str:
    """A token that can be signed and looked up: no control characters, valid Unicode.

    Checked before any use, so neither the signature nor the driver ever
    sees (and quotes in an error) a token it cannot encode.
    """
    if _CONTROL.search(token):
        raise NotAuthenticated("malformed")
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise NotAuthenticated("malformed") from None
    return token


def _verified_token(signed: str, secret: str) -> str:
    """The token of ``token.signature`` if the signature is Better Auth's; else raise."""
    if len(signed) > _MAX_VALUE_LENGTH:
        raise NotAuthenticated("malformed")
    dot = signed.rfind(".")
    if dot < 1:
        raise NotAuthenticated("malformed")
    token, signature = signed[:dot], signed[dot + 1 :]
    if not _SIGNATURE.fullmatch(signature):
        raise NotAuthenticated("malformed")
    expected = sign(_well_formed(token), secret).encode("ascii")
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise NotAuthenticated("bad_signature")
    return token


def _bearer_value(authorization: str) -> str | None:
    """The credentials of a Bearer header; None for another scheme (not ours to judge)."""
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip()


def session_token(
    settings: SessionSettings, *, cookie: str | None = None, authorization: str | None = None
) -> str:
    """The verified session token of a request's headers, before any database lookup."""
    if authorization:
        value = _bearer_value(authorization)
        if value is not None:
            if not value:
                raise NotAuthenticated("malformed")
            if "." not in value:
                if not settings.bearer_allow_unsigned:
                    raise NotAuthenticated("bad_signature")
                if len(value) > _MAX_VALUE_LENGTH:
                    raise NotAuthenticated("malformed")
                return _well_formed(value)
            return _verified_token(_percent_decoded(value), settings.secret)
    if cookie:
        # Better Auth reads only the configured name, which carries the
        # __Secure- prefix under HTTPS; a browser sends that one only over HTTPS.
        value = _cookie(cookie, _SECURE_PREFIX + settings.cookie_name)
        if value is None:
            value = _cookie(cookie, settings.cookie_name)
        if value:
            return _verified_token(_percent_decoded(value), settings.secret)
    raise NotAuthenticated("missing")


async def lookup_user_id(token: str) -> str:
    """The user id of a session token, through the session lookup function."""
    _well_formed(token)
    engine = get_engine()
    raw, pooled = await acquire(engine)
    try:
        rows = await raw.fetch(_LOOKUP, token)
    except asyncpg.UndefinedFunctionError:
        raise ConfigurationError(
            "session lookup function missing: run `piccolo migrations forwards all`"
        ) from None
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            "session lookup refused: run `piccolo orchestrator_db create_roles` (it grants "
            "EXECUTE on orchestrator_db_session_user); `piccolo orchestrator_db check` names "
            "the GRANT to run if the function's owner cannot read \"session\""
        ) from None
    except asyncpg.UndefinedTableError:
        raise ConfigurationError(
            "Better Auth's \"session\" table does not exist: run Better Auth's migrations "
            "(npx @better-auth/cli migrate), then `piccolo orchestrator_db check`"
        ) from None
    except DRIVER_ERRORS as error:  # typed, and without the driver's text (it may quote the token)
        raise database_error(error) from chained(error)
    finally:
        await release(engine, raw, pooled)
    if not rows:
        raise NotAuthenticated("unknown_session")
    if rows[0]["expired"] or rows[0]["user_id"] is None:
        raise NotAuthenticated("expired")
    return str(rows[0]["user_id"])


async def authenticate(*, cookie: str | None = None, authorization: str | None = None) -> str:
    """The Better Auth user id of a request, from its raw ``Cookie`` and ``Authorization``.

    A ``Bearer`` authorization wins over the cookie. Raises
    :class:`NotAuthenticated` (``.reason``: missing, malformed,
    bad_signature, unknown_session, expired) when there is no valid,
    unexpired session, and ConfigurationError when the secret or the
    database is not set up for it.
    """
    settings = session_settings()
    token = session_token(settings, cookie=cookie, authorization=authorization)
    return await lookup_user_id(token)
