"""What each stored secret is bound to: the one definition, for every writer and reader.

The API, the admin's secret form, rotation and the plaintext migration all
seal and open credential secrets here, so their envelopes agree on the AAD:
table, column, row id and user id.
"""

from __future__ import annotations

import uuid

from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.tables import UserCredentials

CREDENTIALS_TABLE = UserCredentials._meta.tablename
SECRET_COLUMNS = ("api_key", "secret_key")


def seal(
    ring: KeyRing, plaintext: str, *, column: str, row_id: uuid.UUID | str, user_id: str
) -> str:
    return ring.encrypt(
        plaintext, table=CREDENTIALS_TABLE, column=column, row_id=str(row_id), user_id=user_id
    )


def unseal(
    ring: KeyRing, envelope: str, *, column: str, row_id: uuid.UUID | str, user_id: str
) -> str:
    """The plaintext, or DecryptionError if the envelope was not sealed for exactly this cell."""
    return ring.decrypt(
        envelope, table=CREDENTIALS_TABLE, column=column, row_id=str(row_id), user_id=user_id
    )
