"""The admin's TOTP secrets: the same envelope format as credentials, another purpose.

A stored MFA secret is ``odbmfa-`` (the prefix piccolo_api's
EncryptionProvider wants) followed by an ordinary v2 envelope, sealed by
:class:`~orchestrator_db.crypto.keyring.KeyRing` under the HKDF purpose
``mfa`` and bound to the column it lives in. One format, one decoder.

Migration path for secrets stored before this format
(``odbmfa-<key_id>.<base64url(nonce | ciphertext | tag)>``, AAD = the key
id): ``rotate_keys`` re-seals them (``rotation.rotate_mfa_secrets``). The
legacy reader, :func:`_open_legacy`, is used by :func:`reseal` alone, so
the running admin never accepts the old format: until ``rotate_keys`` has
run once after the upgrade, an operator enrolled before it cannot pass MFA.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orchestrator_db.crypto.keyring import KeyRing, envelope_version
from orchestrator_db.errors import DecryptionError

PREFIX = "odbmfa"
PURPOSE = "mfa"
#: piccolo_api's AuthenticatorSecret table, where the admin stores them.
SECRET_TABLE = "public.authenticator_secret"
_BINDING = ("authenticator_secret", "secret")
_LABEL = "MFA secret"
_NONCE_LEN = 12


def seal(ring: KeyRing, secret: str) -> str:
    """The envelope (without the prefix) of a TOTP secret."""
    return ring.encrypt(secret, binding=_BINDING, purpose=PURPOSE)


def unseal(ring: KeyRing, envelope: str) -> str:
    """The TOTP secret; DecryptionError for anything but a v2 MFA envelope that opens."""
    return ring.decrypt(envelope, binding=_BINDING, purpose=PURPOSE, label=_LABEL)


def strip_prefix(stored: str) -> str:
    head = f"{PREFIX}-"
    if not isinstance(stored, str) or not stored.startswith(head):
        raise DecryptionError(f"{_LABEL}: not an {PREFIX} value")
    return stored[len(head) :]


def is_current(ring: KeyRing, stored: str) -> bool:
    """Prefixed, current format, under the active key: nothing for rotation to do."""
    head = f"{PREFIX}-"
    return isinstance(stored, str) and stored.startswith(head) and ring.is_current(
        stored[len(head) :]
    )


def reseal(ring: KeyRing, stored: str) -> str:
    """A stored value (current or legacy format, any ring key) re-sealed under the active key."""
    body = strip_prefix(stored)
    if envelope_version(body) is not None:
        secret = unseal(ring, body)
    else:
        secret = _open_legacy(ring, body)
    return f"{PREFIX}-{seal(ring, secret)}"


def _open_legacy(ring: KeyRing, value: str) -> str:
    """The pre-v2 format; for :func:`reseal` only."""
    key_id, dot, body = value.partition(".")
    if not dot or key_id not in ring.key_ids:
        raise DecryptionError(f"{_LABEL}: legacy value under a key that is not in the ring")
    data: bytes | None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        aead = AESGCM(ring.derive_subkey(PURPOSE, key_id=key_id))
        data = aead.decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], key_id.encode())
    except (InvalidTag, binascii.Error, ValueError):
        data = None
    text: str | None = None
    if data is not None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is None:
        raise DecryptionError(f"{_LABEL}: legacy value does not decrypt")
    return text
