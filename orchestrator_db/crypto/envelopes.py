"""What each stored secret is bound to: the one definition, for every writer and reader.

The API, the admin's secret form, rotation and the plaintext migration all
seal and open credential secrets here, so their envelopes agree on the AAD.

A v2 envelope is bound to everything that identifies its secret: the table,
the column, the row id, the user id, the account id and the credential
type. Moving it to another row, column, user, account or type, or changing
any of those fields around it (say, swapping the ``credential_type`` of two
of one user's rows), makes it fail to decrypt with DecryptionError.

v1 envelopes were bound to table, column, row id and user id only. They
still open, bound as they were, until ``rotate_keys`` re-seals them as v2.

What no AAD can stop: someone with write access restoring an *older*
envelope of the same row (same binding) after a replace. See the README's
security section for the limit and what would close it.

The row id stays in the binding (the issue asks for it). Since account id
and credential type now identify the row on their own, a future format may
drop it to allow a one-statement upsert; the version in each envelope makes
that a compatible change.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.tables import UserCredentials

CREDENTIALS_TABLE = UserCredentials._meta.tablename
SECRET_COLUMNS = ("api_key", "secret_key")


def _binding(
    column: str, row_id: str, user_id: str, account_id: str, credential_type: str
) -> tuple[str, ...]:
    """The v2 binding: the one definition of what a credential secret is bound to."""
    return (CREDENTIALS_TABLE, column, row_id, user_id, account_id, credential_type)


def _v1_binding(column: str, row_id: str, user_id: str) -> tuple[str, ...]:
    return (CREDENTIALS_TABLE, column, row_id, user_id)


@dataclass(frozen=True, slots=True)
class Cell:
    """Where a credential secret lives: the row's identifying fields and its column."""

    column: str
    row_id: str
    user_id: str
    account_id: str
    credential_type: str

    @classmethod
    def of(
        cls,
        column: str,
        *,
        row_id: uuid.UUID | str,
        user_id: str,
        account_id: uuid.UUID | str,
        credential_type: str,
    ) -> Cell:
        return cls(column, str(row_id), user_id, str(account_id), credential_type)

    @property
    def binding(self) -> tuple[str, ...]:
        """The v2 AAD binding, in its fixed order."""
        return _binding(self.column, self.row_id, self.user_id, self.account_id, self.credential_type)

    @property
    def v1_binding(self) -> tuple[str, ...]:
        """What a v1 envelope was bound to."""
        return _v1_binding(self.column, self.row_id, self.user_id)

    @property
    def label(self) -> str:
        return f"{CREDENTIALS_TABLE}.{self.column} for row {self.row_id!r}"


def cells(
    *, row_id: uuid.UUID | str, user_id: str, account_id: uuid.UUID | str, credential_type: str
) -> dict[str, Cell]:
    """One Cell per secret column of a row."""
    return {
        column: Cell.of(
            column,
            row_id=row_id,
            user_id=user_id,
            account_id=account_id,
            credential_type=credential_type,
        )
        for column in SECRET_COLUMNS
    }


def row_cells(row: Mapping[str, Any]) -> dict[str, Cell]:
    """The cells of a stored row (a record with id, user_id, user_account_id, credential_type)."""
    return cells(
        row_id=row["id"],
        user_id=row["user_id"],
        account_id=row["user_account_id"],
        credential_type=row["credential_type"],
    )


def seal(ring: KeyRing, plaintext: str, cell: Cell) -> str:
    """A v2 envelope of ``plaintext`` under the active key, bound to ``cell``."""
    return ring.encrypt(plaintext, binding=cell.binding)


def unseal(ring: KeyRing, envelope: str, cell: Cell) -> str:
    """The plaintext, or DecryptionError if the envelope was not sealed for exactly this cell."""
    return ring.decrypt(
        envelope, binding=cell.binding, v1_binding=cell.v1_binding, label=cell.label
    )


def unseal_row(ring: KeyRing, row: Mapping[str, Any]) -> tuple[str, str]:
    """The api_key and secret_key of a stored row, each opened for exactly its cell.

    The read path's form of :func:`unseal`: the same bindings, built once
    per row rather than through a Cell per column.
    """
    row_id, user_id = str(row["id"]), row["user_id"]
    account_id, credential_type = str(row["user_account_id"]), row["credential_type"]

    def opened(column: str) -> str:
        return ring.decrypt(
            row[column],
            binding=_binding(column, row_id, user_id, account_id, credential_type),
            v1_binding=_v1_binding(column, row_id, user_id),
            label=lambda: f"{CREDENTIALS_TABLE}.{column} for row {row_id!r}",
        )

    return opened("api_key"), opened("secret_key")
