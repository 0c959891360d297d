"""Credential envelopes as the package seals them, whichever format it writes.

The package's envelopes moved from v1 (bound to table, column, row id and
user id) to v2 (also account id and credential type, ``binding=`` on the
KeyRing). The benchmark's data, its raw baselines and its maintenance jobs
must seal exactly as the package does, or the package could not read them;
this module is the one place that knows how, for either KeyRing API, so the
benchmark runs on both sides of that change.

The hot-path helpers build the binding tuple directly (what a hand-written
raw asyncpg app would do); at import it is checked against the package's own
definition (``orchestrator_db.crypto.envelopes.Cell``) so the two cannot drift.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from orchestrator_db.crypto import envelopes
from orchestrator_db.crypto.keyring import KeyRing, is_envelope

CREDENTIALS_TABLE = "user_credentials"
V2 = "binding" in inspect.signature(KeyRing.encrypt).parameters
#: The format the package writes now: "v1." or "v2." envelopes.
VERSION = "v2" if V2 else "v1"


def active_prefix(key_id: str) -> str:
    """What every value under key ``key_id`` starts with, in the current format."""
    return f"{VERSION}.{key_id}."


def _binding(column: str, row_id: str, user_id: str, account_id: str, credential_type: str) -> tuple:
    return (CREDENTIALS_TABLE, column, row_id, user_id, account_id, credential_type)


def _v1_binding(column: str, row_id: str, user_id: str) -> tuple:
    return (CREDENTIALS_TABLE, column, row_id, user_id)


if V2:  # the package's own definition must agree with the tuples built here
    _sample = envelopes.Cell.of("api_key", row_id="r", user_id="u", account_id="a", credential_type="t")
    if _sample.binding != _binding("api_key", "r", "u", "a", "t") or _sample.v1_binding != _v1_binding(
        "api_key", "r", "u"
    ):
        raise RuntimeError("benchmarks/sealing.py no longer matches orchestrator_db.crypto.envelopes.Cell")


def _seal(ring: KeyRing, plaintext: str, column: str, row_id: str, user_id: str,
          account_id: str, credential_type: str) -> str:
    if V2:
        return ring.encrypt(plaintext, binding=_binding(column, row_id, user_id, account_id, credential_type))
    return ring.encrypt(plaintext, table=CREDENTIALS_TABLE, column=column, row_id=row_id, user_id=user_id)


def seal_credential(
    ring: KeyRing, row_id: str, user_id: str, account_id: str, credential_type: str,
    api_key: str, secret_key: str,
) -> tuple[str, str]:
    """The package's envelopes for one credential row."""
    return (_seal(ring, api_key, "api_key", row_id, user_id, account_id, credential_type),
            _seal(ring, secret_key, "secret_key", row_id, user_id, account_id, credential_type))


def seal_row(ring: KeyRing, row: Mapping[str, Any], api_key: str, secret_key: str) -> tuple[str, str]:
    """As :func:`seal_credential`, the identifying fields from a stored row."""
    return seal_credential(ring, str(row["id"]), row["user_id"], str(row["user_account_id"]),
                           row["credential_type"], api_key, secret_key)


def _open(ring: KeyRing, envelope: str, column: str, row: Mapping[str, Any], row_id: str) -> str:
    user_id = row["user_id"]
    if V2:
        return ring.decrypt(
            envelope,
            binding=_binding(column, row_id, user_id, str(row["user_account_id"]), row["credential_type"]),
            v1_binding=_v1_binding(column, row_id, user_id),
        )
    return ring.decrypt(envelope, table=CREDENTIALS_TABLE, column=column, row_id=row_id, user_id=user_id)


def open_row(ring: KeyRing, row: Mapping[str, Any], user_id: str) -> tuple[str, str]:
    """Decrypt a stored row's two secrets the way the package does (owner checked first)."""
    if row["user_id"] != user_id:
        raise RuntimeError("RLS returned another user's row")
    row_id = str(row["id"])
    return (_open(ring, row["api_key"], "api_key", row, row_id),
            _open(ring, row["secret_key"], "secret_key", row, row_id))


def reseal_value(ring: KeyRing, value: str, column: str, row: Mapping[str, Any]) -> str:
    """A stored value (envelope of any format and key, or legacy plaintext) under the active key."""
    row_id = str(row["id"])
    plaintext = _open(ring, value, column, row, row_id) if is_envelope(value) else value
    return _seal(ring, plaintext, column, row_id, row["user_id"], str(row["user_account_id"]),
                 row["credential_type"])


# What a SQLAlchemy TypeDecorator can bind: it is handed the value alone.
def seal_column_only(ring: KeyRing, value: str, column: str) -> str:
    if V2:
        return ring.encrypt(value, binding=(CREDENTIALS_TABLE, column))
    return ring.encrypt(value, table=CREDENTIALS_TABLE, column=column, row_id="", user_id="")


def open_column_only(ring: KeyRing, value: str, column: str) -> str:
    if V2:
        return ring.decrypt(value, binding=(CREDENTIALS_TABLE, column))
    return ring.decrypt(value, table=CREDENTIALS_TABLE, column=column, row_id="", user_id="")
