"""The credential operations, as methods of the object ``user_scope`` yields.

Making them methods of the scope means no tenant operation can run outside
one. Inputs are validated by the pydantic input models before any SQL, and
secrets are sealed as envelopes bound to everything that identifies them
(crypto/envelopes.py), so the row id is chosen here, before encryption.

:func:`write_credential` is the one write path for a credential's secrets:
``UserScope.put_credential`` and the admin's secret form both call it, with
their own connection and transaction, so both take the same locks and raise
the same errors.

Every table and function name in this module's SQL is schema-qualified, so
a temp table or a same-named object earlier on the search_path cannot stand
in for ours.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import SecretStr, TypeAdapter

from orchestrator_db.connection import ScopeConnection
from orchestrator_db.crypto.envelopes import CREDENTIALS_TABLE, cells, seal, unseal_row
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import (
    AccountExists,
    AccountNotFound,
    ConstraintViolation,
    CredentialNotFound,
    ScopeError,
    TransactionConflict,
    UserNotFound,
)
from orchestrator_db.models import (
    CREDENTIAL_TYPE_PATTERN,
    CredentialType,
    UserAccount,
    UserAccountCreate,
    UserCredential,
    UserCredentialInput,
    validate_credential_input,
)
from orchestrator_db.tables import CREDENTIAL_TYPE_MAX_LENGTH, UserAccounts

SCHEMA = "public"
ACCOUNTS = f"{SCHEMA}.{UserAccounts._meta.tablename}"
CREDENTIALS = f"{SCHEMA}.{CREDENTIALS_TABLE}"
_FUNCTIONS = f"{SCHEMA}.orchestrator_db"

_credential_type = TypeAdapter(CredentialType)
_CREDENTIAL_TYPE = re.compile(CREDENTIAL_TYPE_PATTERN)


def check_credential_type(credential_type: object) -> None:
    """CredentialType's rules; the common valid case without pydantic's call overhead.

    Anything the fast check does not accept goes through the TypeAdapter,
    so an invalid value raises the same ValidationError as before.
    """
    if (
        type(credential_type) is not str
        or len(credential_type) > CREDENTIAL_TYPE_MAX_LENGTH
        or _CREDENTIAL_TYPE.fullmatch(credential_type) is None
    ):
        _credential_type.validate_python(credential_type)

# Reads: a one-statement form for a scope that has not begun (the scoped
# function sets the user itself) and a plain form for inside the transaction.
_ACCOUNT_ONE_SHOT = f"SELECT * FROM {_FUNCTIONS}_scoped_account($1)"
_ACCOUNT_IN_TX = f"SELECT * FROM {ACCOUNTS} WHERE user_id = $1"
_CREDENTIAL_IN_TX = (
    f"SELECT * FROM {CREDENTIALS} WHERE user_id = $1 AND credential_type = $2"
)
_CREDENTIALS_IN_TX = (
    f"SELECT * FROM {CREDENTIALS} WHERE user_id = $1 ORDER BY credential_type"
)

_INSERT_ACCOUNT = (
    f"INSERT INTO {ACCOUNTS} (user_id, account_name) VALUES ($1, $2) RETURNING *"
)
# The account id and the existing credential's id, if any, that row locked
# until commit; a first write locks the account row instead, so first
# writers of a type queue one behind the other. See its migrations.
_LOCK_SLOT = (
    f"SELECT account_id, credential_id FROM {_FUNCTIONS}_credential_slot($1, $2)"
)
# ON CONFLICT DO NOTHING: should a row of this type appear despite the lock
# (a writer that bypasses this path), the insert returns nothing and the
# write path looks again, instead of aborting the transaction.
_INSERT_CREDENTIAL = f"""
INSERT INTO {CREDENTIALS}
    (id, user_account_id, user_id, credential_type, api_key, secret_key, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING *
"""
# The row's identifying fields are matched as well as its id, so the
# envelopes (bound to them) cannot land on a row they do not fit. The old
# is_active and expires_at come back for the admin's audit entry.
_REPLACE_CREDENTIAL = f"""
UPDATE {CREDENTIALS} AS c
SET api_key = $3, secret_key = $4, expires_at = $5, is_active = true
FROM (SELECT o.id, o.is_active, o.expires_at FROM {CREDENTIALS} AS o WHERE o.id = $1) AS old
WHERE c.id = $1 AND old.id = c.id AND c.user_id = $2
  AND c.user_account_id = $6 AND c.credential_type = $7
RETURNING c.*, old.is_active AS previous_is_active, old.expires_at AS previous_expires_at
"""
_DEACTIVATE = (
    f"UPDATE {CREDENTIALS} SET is_active = false "
    "WHERE user_id = $1 AND credential_type = $2 RETURNING id"
)
_DELETE_CREDENTIAL = (
    f"DELETE FROM {CREDENTIALS} WHERE user_id = $1 AND credential_type = $2 RETURNING id"
)
_DELETE_ACCOUNT = f"DELETE FROM {ACCOUNTS} WHERE user_id = $1 RETURNING id"

#: Runs one statement in the caller's transaction and returns its rows,
#: raising the project's typed errors (see connection.database_error).
Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]

# A slot that changes under us is looked up again, at most this many times.
_WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class WrittenCredential:
    """What :func:`write_credential` stored: the row, and what it replaced."""

    row: asyncpg.Record
    replaced: bool
    #: is_active and expires_at before a replace; None for a first write.
    previous: dict[str, Any] | None


@dataclass(frozen=True)
class _Slot:
    """Where a credential goes, and its secrets sealed for exactly that row."""

    account_id: uuid.UUID
    existing_id: uuid.UUID | None
    row_id: uuid.UUID
    sealed: dict[str, str]


async def _slot(
    fetch: Fetch, sql: str, user_id: str, data: UserCredentialInput, ring: KeyRing
) -> _Slot:
    """Look the slot up with ``sql`` and seal the secrets for its row (a new id if none)."""
    found = await fetch(sql, user_id, data.credential_type)
    if not found:
        raise AccountNotFound(f"user {user_id!r} has no account; call create_account first")
    account_id, existing_id = found[0]["account_id"], found[0]["credential_id"]
    row_id = existing_id if existing_id is not None else uuid.uuid4()
    cell = cells(
        row_id=row_id, user_id=user_id, account_id=account_id, credential_type=data.credential_type
    )
    secrets = {"api_key": data.api_key, "secret_key": data.secret_key}
    sealed = {
        column: seal(ring, secrets[column].get_secret_value(), cell[column]) for column in cell
    }
    return _Slot(account_id, existing_id, row_id, sealed)


async def write_credential(
    fetch: Fetch, user_id: str, data: UserCredentialInput
) -> WrittenCredential:
    """Lock the credential's slot, seal the secrets for it and write them.

    The one write path, for the API and the admin. ``fetch`` runs in the
    caller's transaction (a scope's, or the operator's), which must commit
    for the write to last. Raises AccountNotFound if the user has no
    account (including one deleted while this write waited for it).
    """
    ring = get_key_ring()
    for _ in range(_WRITE_ATTEMPTS):
        slot = await _slot(fetch, _LOCK_SLOT, user_id, data, ring)
        if slot.existing_id is not None:
            rows = await fetch(
                _REPLACE_CREDENTIAL,
                slot.existing_id,
                user_id,
                slot.sealed["api_key"],
                slot.sealed["secret_key"],
                data.expires_at,
                slot.account_id,
                data.credential_type,
            )
            if rows:
                row = rows[0]
                previous = {
                    "is_active": row["previous_is_active"],
                    "expires_at": row["previous_expires_at"],
                }
                return WrittenCredential(row, True, previous)
        else:
            rows = await fetch(
                _INSERT_CREDENTIAL,
                slot.row_id,
                slot.account_id,
                user_id,
                data.credential_type,
                slot.sealed["api_key"],
                slot.sealed["secret_key"],
                data.expires_at,
            )
            if rows:
                return WrittenCredential(rows[0], False, None)
        # The slot changed under us (the locks make this impossible for
        # writers on this path): look again, with a fresh snapshot.
    raise _kept_changing(data.credential_type)


# The write of a put that is its own transaction: two round trips, no lock.
_SLOT_ALONE = f"SELECT account_id, credential_id FROM {_FUNCTIONS}_scoped_slot($1, $2)"
_PUT_ALONE = f"SELECT * FROM {_FUNCTIONS}_scoped_put($1, $2, $3, $4, $5, $6, $7)"
_FOREIGN_KEY_VIOLATION = "23503"


async def write_credential_alone(
    fetch_alone: Fetch, user_id: str, data: UserCredentialInput
) -> asyncpg.Record:
    """Seal and write a credential as its own transaction, in two round trips.

    The first looks the slot up without a lock; the second upserts only if
    the slot still holds the row the envelopes were sealed for (see the
    migration of ``orchestrator_db_scoped_put``), and commits by itself.
    When another writer changed the slot in between, or the account went
    away (a foreign-key violation: it may have been re-created), it looks
    again; the same race-safety as :func:`write_credential`'s locks, without
    holding any.
    """
    ring = get_key_ring()
    for _ in range(_WRITE_ATTEMPTS):
        slot = await _slot(fetch_alone, _SLOT_ALONE, user_id, data, ring)
        try:
            rows = await fetch_alone(
                _PUT_ALONE,
                user_id,
                slot.row_id,
                slot.account_id,
                data.credential_type,
                slot.sealed["api_key"],
                slot.sealed["secret_key"],
                data.expires_at,
            )
        except ConstraintViolation as error:
            if error.sqlstate != _FOREIGN_KEY_VIOLATION:
                raise
            continue  # the account is gone, or was re-created: look again
        if rows:
            return rows[0]
    raise _kept_changing(data.credential_type)


def _kept_changing(credential_type: str) -> TransactionConflict:
    return TransactionConflict(
        f"the {credential_type!r} credential kept changing during the write; "
        "nothing was written by this call: retry it"
    )


# Reads ######################################################################
# Shared by a scope's reads and the standalone ones (standalone.py), which
# fetch with the same one-statement SQL.
CREDENTIAL_ONE_SHOT = f"SELECT * FROM {_FUNCTIONS}_scoped_credential($1, $2)"
CREDENTIALS_ONE_SHOT = f"SELECT * FROM {_FUNCTIONS}_scoped_credentials($1)"


def usable_credential(
    user_id: str, credential_type: str, rows: list[asyncpg.Record]
) -> UserCredential:
    """The credential of a lookup's rows if it is active and unexpired; else CredentialNotFound."""
    if not rows:
        raise CredentialNotFound(credential_type, "missing")
    row = rows[0]
    if not row["is_active"]:
        raise CredentialNotFound(credential_type, "inactive")
    expires_at = _aware(row["expires_at"])
    if expires_at is not None and expires_at <= _now():
        raise CredentialNotFound(credential_type, "expired")
    return opened_credential(user_id, row)


def usable_credentials(
    user_id: str, rows: list[asyncpg.Record], include_inactive: bool
) -> list[UserCredential]:
    """The listed rows, decrypted: the usable ones, or all with ``include_inactive``."""
    if not include_inactive:
        now = _now()
        rows = [row for row in rows if row["is_active"] and _unexpired(row["expires_at"], now)]
    return [opened_credential(user_id, row) for row in rows]


def opened_credential(user_id: str, row: asyncpg.Record) -> UserCredential:
    """A stored row, its owner checked, its secrets decrypted into the read model."""
    if row["user_id"] != user_id:  # RLS makes this impossible; be sure.
        raise ScopeError("the database returned another user's row")
    api_key, secret_key = unseal_row(get_key_ring(), row)
    return credential_model(row, api_key, secret_key)


def _unexpired(expires_at: datetime.datetime | None, now: datetime.datetime) -> bool:
    moment = _aware(expires_at)
    return moment is None or moment > now


def _aware(moment: datetime.datetime | None) -> datetime.datetime | None:
    """asyncpg reads timestamptz 'infinity' and '-infinity' back as naive
    datetime.max and datetime.min; as UTC they compare like any other time
    (never expires, already expired)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class UserScope:
    """One user's view of the store; obtain it from ``user_scope(user_id)``."""

    __slots__ = ("user_id", "_connection")

    def __init__(self, user_id: str, connection: ScopeConnection) -> None:
        self.user_id = user_id
        self._connection = connection

    def __repr__(self) -> str:
        return f"UserScope(user_id={self.user_id!r})"

    @property
    def owner_task(self) -> object:
        """The asyncio task that opened this scope; only it may use the scope."""
        return self._connection.owner_task

    # Accounts ###############################################################

    async def create_account(self, account_name: str) -> UserAccount:
        data = UserAccountCreate(account_name=account_name)
        try:
            rows = await self._connection.fetch(
                _INSERT_ACCOUNT, self.user_id, data.account_name
            )
        except ConstraintViolation as error:
            if error.sqlstate == "23505":  # unique_violation
                raise AccountExists(f"user {self.user_id!r} already has an account") from None
            if error.sqlstate == "23503":  # foreign_key_violation
                raise UserNotFound(f"no Better Auth user {self.user_id!r}") from None
            raise
        return UserAccount.model_validate(dict(rows[0]))

    async def get_account(self) -> UserAccount:
        rows = await self._connection.read(
            _ACCOUNT_ONE_SHOT, _ACCOUNT_IN_TX, self.user_id
        )
        if not rows:
            raise AccountNotFound(f"user {self.user_id!r} has no account")
        return UserAccount.model_validate(dict(rows[0]))

    async def delete_account(self) -> None:
        """Deletes the account and, by cascade, all its credentials."""
        if not await self._connection.fetch(_DELETE_ACCOUNT, self.user_id):
            raise AccountNotFound(f"user {self.user_id!r} has no account")

    # Credentials ############################################################

    async def put_credential(
        self,
        credential_type: str,
        api_key: str,
        secret_key: str,
        expires_at: datetime.datetime | None = None,
    ) -> UserCredential:
        """Insert, or replace in place (re-encrypted, reactivated)."""
        return await self._put(credential_type, api_key, secret_key, expires_at, alone=False)

    async def _put(
        self,
        credential_type: str,
        api_key: str,
        secret_key: str,
        expires_at: datetime.datetime | None,
        *,
        alone: bool,
    ) -> UserCredential:
        """Validate, write and build the model; ``alone``: as its own transaction
        (standalone.put_credential), else in the scope's."""
        data = validate_credential_input(
            credential_type=credential_type,
            api_key=api_key,
            secret_key=secret_key,
            expires_at=expires_at,
        )
        if alone:
            row = await write_credential_alone(self._connection.fetch_alone, self.user_id, data)
        else:
            row = (await write_credential(self._connection.fetch, self.user_id, data)).row
        return credential_model(row, data.api_key.get_secret_value(), data.secret_key.get_secret_value())

    async def get_credential(self, credential_type: str) -> UserCredential:
        """The active, unexpired credential, decrypted; else CredentialNotFound."""
        check_credential_type(credential_type)
        rows = await self._connection.read(
            CREDENTIAL_ONE_SHOT, _CREDENTIAL_IN_TX, self.user_id, credential_type
        )
        return usable_credential(self.user_id, credential_type, rows)

    async def list_credentials(
        self, include_inactive: bool = False
    ) -> list[UserCredential]:
        """Usable credentials; with include_inactive, also inactive and expired ones."""
        rows = await self._connection.read(
            CREDENTIALS_ONE_SHOT, _CREDENTIALS_IN_TX, self.user_id
        )
        return usable_credentials(self.user_id, rows, include_inactive)

    async def deactivate_credential(self, credential_type: str) -> None:
        check_credential_type(credential_type)
        if not await self._connection.fetch(_DEACTIVATE, self.user_id, credential_type):
            raise CredentialNotFound(credential_type, "missing")

    async def delete_credential(self, credential_type: str) -> None:
        check_credential_type(credential_type)
        if not await self._connection.fetch(
            _DELETE_CREDENTIAL, self.user_id, credential_type
        ):
            raise CredentialNotFound(credential_type, "missing")


def credential_model(row: asyncpg.Record, api_key: str, secret_key: str) -> UserCredential:
    """The read model of a stored row, built without re-validating it.

    Construction without validation (``model_construct``'s, done directly
    when that is proven equal, see ``_construct_checked``) is safe here, and
    saves most of the read path's pydantic cost: every value comes from a typed column of our own
    table (uuid, text, boolean, timestamptz; NOT NULL and CHECKs as the
    model says), read back by asyncpg as the model's Python types; the
    row's owner was checked; ``expires_at`` is made aware (asyncpg reads
    'infinity' naive); and the secrets are strings that just decrypted
    and decoded as UTF-8, wrapped in SecretStr as the model declares.
    """
    # In the model's field order (the row has every field): repr, dumps and
    # JSON list fields in that order.
    values: dict[str, Any] = {key: row[key] for key in _FIELDS}
    values["expires_at"] = _aware(values["expires_at"])
    values["api_key"] = SecretStr(api_key)
    values["secret_key"] = SecretStr(secret_key)
    return _construct(values)


_ALL_FIELDS = frozenset(UserCredential.model_fields)
_FIELDS = tuple(UserCredential.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def _construct_directly(values: dict[str, Any]) -> UserCredential:
    """What ``model_construct`` does for a model with every field given and no extras,
    private attributes or post-init, without its per-field loop (5 µs -> under 1 µs)."""
    credential = _new_object(UserCredential)
    _set_attribute(credential, "__dict__", values)
    _set_attribute(credential, "__pydantic_fields_set__", set(_ALL_FIELDS))
    _set_attribute(credential, "__pydantic_extra__", None)
    _set_attribute(credential, "__pydantic_private__", None)
    return credential


def _construct_checked() -> Callable[[dict[str, Any]], UserCredential]:
    """The direct construction if, for this pydantic, it builds what model_construct builds.

    Checked once at import on a sample credential; any difference (a new
    internal attribute, a post-init hook, private attributes) falls back to
    ``model_construct`` itself.
    """
    moment = datetime.datetime.now(datetime.timezone.utc)
    by_name = {
        "id": uuid.uuid4(),
        "user_account_id": uuid.uuid4(),
        "user_id": "sample",
        "credential_type": "sample",
        "api_key": SecretStr("a"),
        "secret_key": SecretStr("b"),
        "is_active": True,
        "expires_at": None,
        "created_at": moment,
        "updated_at": moment,
    }
    sample = {name: by_name[name] for name in _FIELDS if name in by_name}

    def by_pydantic(values: dict[str, Any]) -> UserCredential:
        return UserCredential.model_construct(set(_ALL_FIELDS), **values)

    if set(sample) != _ALL_FIELDS or UserCredential.__pydantic_post_init__ is not None:
        return by_pydantic
    expected, direct = by_pydantic(dict(sample)), _construct_directly(dict(sample))
    same = (
        expected == direct
        and repr(expected) == repr(direct)
        and expected.model_dump() == direct.model_dump()
        and vars(expected) == vars(direct)
        and all(_same_state(expected, direct, name) for name in _PYDANTIC_STATE)
    )
    return _construct_directly if same else by_pydantic


_PYDANTIC_STATE = ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")


def _same_state(expected: UserCredential, direct: UserCredential, name: str) -> bool:
    """The same value of the same type (a frozenset equals a set, but cannot be added to)."""
    mine, theirs = getattr(direct, name, None), getattr(expected, name, None)
    return type(mine) is type(theirs) and mine == theirs
_construct = _construct_checked()
