"""Writers of the formats nothing in the package writes any more, for tests of reading and upgrading them.

- v1 credential envelopes: ``v1.<kid>.<body>``, AAD bound to table, column,
  row id and user id only;
- the admin's MFA secrets before v2: ``odbmfa-<kid>.<body>``, AAD = the key id.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from orchestrator_db.crypto.envelopes import Cell


def _raw_key(entry: str) -> tuple[str, bytes]:
    """(key id, raw key) of a ``"<kid>:<base64>"`` ring entry."""
    kid, _, text = entry.partition(":")
    return kid, base64.b64decode(text)


def _subkey(key: bytes, purpose: str) -> bytes:
    info = b"orchestrator_db/" + purpose.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def v1_envelope(entry: str, plaintext: str, cell: Cell) -> str:
    """A v1 envelope as the package wrote it before format v2."""
    kid, key = _raw_key(entry)
    aad = bytearray()
    for part in ("v1", kid, *cell.v1_binding):
        raw = part.encode()
        aad += len(raw).to_bytes(4, "big") + raw
    nonce = os.urandom(12)
    sealed = AESGCM(_subkey(key, "credentials")).encrypt(nonce, plaintext.encode(), bytes(aad))
    return f"v1.{kid}.{_b64(nonce + sealed)}"


def legacy_mfa(entry: str, secret: str) -> str:
    """An MFA secret as KeyRingMFAEncryption stored it before format v2."""
    kid, key = _raw_key(entry)
    nonce = os.urandom(12)
    sealed = AESGCM(_subkey(key, "mfa")).encrypt(nonce, secret.encode(), kid.encode())
    return f"odbmfa-{kid}.{_b64(nonce + sealed)}"
