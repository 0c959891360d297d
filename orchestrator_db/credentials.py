"""The credential operations, as methods of the object ``user_scope`` yields.

Making them methods of the scope means no tenant operation can run outside
one. Inputs are validated by the pydantic input models before any SQL, and
secrets are encrypted with AAD that binds each envelope to its row id,
column and user, so the row id is chosen here, before encryption.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import asyncpg
from pydantic import TypeAdapter

from orchestrator_db.connection import ScopeConnection
from orchestrator_db.crypto.envelopes import CREDENTIALS_TABLE, seal, unseal
from orchestrator_db.crypto.providers import get_key_ring
from orchestrator_db.errors import (
    AccountExists,
    AccountNotFound,
    CredentialNotFound,
    ScopeError,
    UserNotFound,
)
from orchestrator_db.models import (
    CredentialType,
    UserAccount,
    UserAccountCreate,
    UserCredential,
    validate_credential_input,
)
from orchestrator_db.tables import UserAccounts

ACCOUNTS = UserAccounts._meta.tablename
CREDENTIALS = CREDENTIALS_TABLE

_credential_type = TypeAdapter(CredentialType)

# Reads: a one-statement form for a scope that has not begun (the scoped
# function sets the user itself) and a plain form for inside the transaction.
_ACCOUNT_ONE_SHOT = "SELECT * FROM orchestrator_db_scoped_account($1)"
_ACCOUNT_IN_TX = f"SELECT * FROM {ACCOUNTS} WHERE user_id = $1"
_CREDENTIAL_ONE_SHOT = "SELECT * FROM orchestrator_db_scoped_credential($1, $2)"
_CREDENTIAL_IN_TX = (
    f"SELECT * FROM {CREDENTIALS} WHERE user_id = $1 AND credential_type = $2"
)
_CREDENTIALS_ONE_SHOT = "SELECT * FROM orchestrator_db_scoped_credentials($1)"
_CREDENTIALS_IN_TX = (
    f"SELECT * FROM {CREDENTIALS} WHERE user_id = $1 ORDER BY credential_type"
)

_INSERT_ACCOUNT = (
    f"INSERT INTO {ACCOUNTS} (user_id, account_name) VALUES ($1, $2) RETURNING *"
)
# The account id and the existing credential's id, if any, that row locked
# until commit; first writers of a type queue on the account row instead.
# See its migration.
_LOCK_SLOT = "SELECT account_id, credential_id FROM orchestrator_db_credential_slot($1, $2)"
_INSERT_CREDENTIAL = f"""
INSERT INTO {CREDENTIALS}
    (id, user_account_id, user_id, credential_type, api_key, secret_key, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""
_REPLACE_CREDENTIAL = f"""
UPDATE {CREDENTIALS}
SET api_key = $3, secret_key = $4, expires_at = $5, is_active = true
WHERE id = $1 AND user_id = $2
RETURNING *
"""
_DEACTIVATE = (
    f"UPDATE {CREDENTIALS} SET is_active = false "
    "WHERE user_id = $1 AND credential_type = $2 RETURNING id"
)
_DELETE_CREDENTIAL = (
    f"DELETE FROM {CREDENTIALS} WHERE user_id = $1 AND credential_type = $2 RETURNING id"
)
_DELETE_ACCOUNT = f"DELETE FROM {ACCOUNTS} WHERE user_id = $1 RETURNING id"


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
        except asyncpg.UniqueViolationError:
            raise AccountExists(f"user {self.user_id!r} already has an account") from None
        except asyncpg.ForeignKeyViolationError:
            raise UserNotFound(f"no Better Auth user {self.user_id!r}") from None
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
        data = validate_credential_input(
            credential_type=credential_type,
            api_key=api_key,
            secret_key=secret_key,
            expires_at=expires_at,
        )
        slot = await self._connection.fetch(
            _LOCK_SLOT, self.user_id, data.credential_type
        )
        if not slot:
            raise AccountNotFound(
                f"user {self.user_id!r} has no account; call create_account first"
            )
        account_id, existing_id = slot[0]["account_id"], slot[0]["credential_id"]
        api_key_value = data.api_key.get_secret_value()
        secret_key_value = data.secret_key.get_secret_value()
        if existing_id is not None:
            api_envelope, secret_envelope = self._encrypt(
                existing_id, api_key_value, secret_key_value
            )
            rows = await self._connection.fetch(
                _REPLACE_CREDENTIAL,
                existing_id,
                self.user_id,
                api_envelope,
                secret_envelope,
                data.expires_at,
            )
            if rows:
                return self._model(rows[0], api_key_value, secret_key_value)
            # The lookup locked the row, so it cannot have gone; should a
            # future change break that, the slot is free and ours: insert.
        row_id = uuid.uuid4()
        api_envelope, secret_envelope = self._encrypt(
            row_id, api_key_value, secret_key_value
        )
        rows = await self._connection.fetch(
            _INSERT_CREDENTIAL,
            row_id,
            account_id,
            self.user_id,
            data.credential_type,
            api_envelope,
            secret_envelope,
            data.expires_at,
        )
        return self._model(rows[0], api_key_value, secret_key_value)

    async def get_credential(self, credential_type: str) -> UserCredential:
        """The active, unexpired credential, decrypted; else CredentialNotFound."""
        _credential_type.validate_python(credential_type)
        rows = await self._connection.read(
            _CREDENTIAL_ONE_SHOT, _CREDENTIAL_IN_TX, self.user_id, credential_type
        )
        if not rows:
            raise CredentialNotFound(credential_type, "missing")
        row = rows[0]
        if not row["is_active"]:
            raise CredentialNotFound(credential_type, "inactive")
        expires_at = row["expires_at"]
        if expires_at is not None and expires_at <= _now():
            raise CredentialNotFound(credential_type, "expired")
        return self._decrypted(row)

    async def list_credentials(
        self, include_inactive: bool = False
    ) -> list[UserCredential]:
        """Usable credentials; with include_inactive, also inactive and expired ones."""
        rows = await self._connection.read(
            _CREDENTIALS_ONE_SHOT, _CREDENTIALS_IN_TX, self.user_id
        )
        if not include_inactive:
            now = _now()
            rows = [
                row
                for row in rows
                if row["is_active"]
                and (row["expires_at"] is None or row["expires_at"] > now)
            ]
        return [self._decrypted(row) for row in rows]

    async def deactivate_credential(self, credential_type: str) -> None:
        _credential_type.validate_python(credential_type)
        if not await self._connection.fetch(_DEACTIVATE, self.user_id, credential_type):
            raise CredentialNotFound(credential_type, "missing")

    async def delete_credential(self, credential_type: str) -> None:
        _credential_type.validate_python(credential_type)
        if not await self._connection.fetch(
            _DELETE_CREDENTIAL, self.user_id, credential_type
        ):
            raise CredentialNotFound(credential_type, "missing")

    # Crypto #################################################################

    def _encrypt(self, row_id: uuid.UUID, api_key: str, secret_key: str) -> tuple[str, str]:
        ring = get_key_ring()
        return (
            seal(ring, api_key, column="api_key", row_id=row_id, user_id=self.user_id),
            seal(ring, secret_key, column="secret_key", row_id=row_id, user_id=self.user_id),
        )

    def _decrypted(self, row: asyncpg.Record) -> UserCredential:
        if row["user_id"] != self.user_id:  # RLS makes this impossible; be sure.
            raise ScopeError("the database returned another user's row")
        ring = get_key_ring()
        cell = {"row_id": row["id"], "user_id": self.user_id}
        api_key = unseal(ring, row["api_key"], column="api_key", **cell)
        secret_key = unseal(ring, row["secret_key"], column="secret_key", **cell)
        return self._model(row, api_key, secret_key)

    @staticmethod
    def _model(row: asyncpg.Record, api_key: str, secret_key: str) -> UserCredential:
        values: dict[str, Any] = dict(row)
        values["api_key"] = api_key
        values["secret_key"] = secret_key
        return UserCredential.model_validate(values)
