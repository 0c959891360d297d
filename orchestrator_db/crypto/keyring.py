"""Column encryption for users' broker API keys.

Values are stored as ``v1.<key_id>.<base64url(nonce | ciphertext | tag)>``
sealed with AES-256-GCM. The associated data binds each value to its
table, column, row and user, so a ciphertext copied to another row, column
or account fails to decrypt instead of silently yielding someone else's key.

Keys live in a :class:`KeyRing`: the first key encrypts, every key decrypts,
which is what lets keys be rotated without downtime. Raw keys never encrypt
anything directly; each use gets its own HKDF-derived subkey.

This module deliberately imports nothing from the database side, so it can be
tested, audited and used from CLI tools on its own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from orchestrator_db.errors import DecryptionError, KeyConfigError

__all__ = ["KeyRing", "generate_key_entry", "is_envelope"]

_VERSION = "v1"
_PREFIX = _VERSION + "."
_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_MIN_BODY_BYTES = _NONCE_LEN + _TAG_LEN
_HKDF_INFO_PREFIX = b"orchestrator_db/"
_COLUMN_PURPOSE = "credentials"
_GENERATE_HINT = "run `piccolo orchestrator_db generate_key` to make one"

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_ENVELOPE_RE = re.compile(r"v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]+)")
_STD_B64 = bytes.maketrans(b"-_", b"+/")


def _hkdf(key: bytes, purpose: str) -> bytes:
    """Derive a 32-byte subkey so one raw key can serve unrelated uses safely."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=None,
        info=_HKDF_INFO_PREFIX + purpose.encode("utf-8"),
    ).derive(key)


def _aad(key_id: str, table: str, column: str, row_id: str, user_id: str) -> bytes:
    """Length-prefix every part so no two different contexts share an AAD."""
    out = bytearray()
    for part in (_VERSION, key_id, table, column, row_id, user_id):
        if not isinstance(part, str):
            raise TypeError(
                f"encryption context must be str, got {type(part).__name__}"
            )
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big")
        out += raw
    return bytes(out)


def _b64url_decode(body: str) -> bytes | None:
    """Strict unpadded base64url: returns None unless ``body`` is canonical.

    Canonical matters: otherwise the unused low bits of the last character
    could be flipped without changing the decoded bytes.
    """
    if len(body) % 4 == 1 or not _B64URL_RE.fullmatch(body):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
        return None
    return raw


def _decode_key_text(text: str) -> bytes | None:
    """Accept standard or urlsafe base64, padded or not; None if malformed."""
    if not text or len(text) % 4 == 1:
        return None
    try:
        data = text.encode("ascii").translate(_STD_B64)
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


def is_envelope(value: object) -> bool:
    """Cheap syntactic check (no key needed) for whether a value looks encrypted.

    Useful to spot plaintext that slipped into an encrypted column; it does not
    prove the value decrypts.
    """
    if not isinstance(value, str):
        return False
    m = _ENVELOPE_RE.fullmatch(value)
    if m is None:
        return False
    n = len(m.group(2))
    return n % 4 != 1 and n * 3 // 4 >= _MIN_BODY_BYTES


def generate_key_entry(key_id: str | None = None) -> str:
    """Return a fresh ``"<key_id>:<base64 32 random bytes>"`` ring entry.

    The default id is the UTC timestamp (``k20261125T070102``) so ids sort by
    age and a rotation never reuses one by accident.
    """
    if key_id is None:
        key_id = "k" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise KeyConfigError(
            "key id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return f"{key_id}:{base64.b64encode(os.urandom(_KEY_LEN)).decode('ascii')}"


class KeyRing:
    """Encryption keys for credential columns; the first key is the active one.

    Immutable after construction. Per-key AES-GCM objects are built up front
    so encrypt/decrypt stay in the microsecond range.
    """

    __slots__ = ("_active", "_ids", "_keys", "_aeads")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        entries = list(keys) if not isinstance(keys, (str, bytes)) else None
        if not entries:
            raise KeyConfigError("key ring needs at least one key")
        raw_keys: dict[str, bytes] = {}
        for index, entry in enumerate(entries, 1):
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise KeyConfigError(f"key entry {index} must be a (key_id, key) pair")
            key_id, key = entry
            if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
                raise KeyConfigError(
                    f"key entry {index}: key id must be 1-32 characters of "
                    "A-Z, a-z, 0-9, '_' or '-'"
                )
            if key_id in raw_keys:
                raise KeyConfigError(f"key entry {index}: duplicate key id {key_id!r}")
            if not isinstance(key, (bytes, bytearray)) or len(key) != _KEY_LEN:
                raise KeyConfigError(f"key {key_id!r} must be exactly {_KEY_LEN} bytes")
            key = bytes(key)
            for other_id, other in raw_keys.items():
                if other == key:
                    raise KeyConfigError(
                        f"keys {other_id!r} and {key_id!r} are identical; "
                        "a rotation needs a freshly generated key"
                    )
            raw_keys[key_id] = key
        self._keys = raw_keys
        self._ids = tuple(raw_keys)
        self._active = self._ids[0]
        self._aeads = {
            kid: AESGCM(_hkdf(key, _COLUMN_PURPOSE)) for kid, key in raw_keys.items()
        }

    @classmethod
    def parse(cls, text: str, *, source: str = "ORCHESTRATOR_DB_KEYS") -> KeyRing:
        """Build a ring from ``"kid2:<base64>,kid1:<base64>"`` (env var or file).

        Entries are separated by commas and/or newlines; blank lines and lines
        starting with ``#`` are ignored. Errors name ``source`` and never echo
        key material.
        """
        problem = cls._parse_problem(text)
        if isinstance(problem, str):
            raise KeyConfigError(f"{source}: {problem}; {_GENERATE_HINT}")
        try:
            return cls(problem)
        except KeyConfigError as exc:
            message = str(exc)
        raise KeyConfigError(f"{source}: {message}; {_GENERATE_HINT}")

    @staticmethod
    def _parse_problem(text: object) -> list[tuple[str, bytes]] | str:
        """Return the parsed entries, or a key-free description of the problem."""
        if not isinstance(text, str):
            return "is not set"
        entries: list[tuple[str, bytes]] = []
        number = 0
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for item in line.split(","):
                item = item.strip()
                if not item:
                    continue
                number += 1
                key_id, sep, encoded = item.partition(":")
                key_id, encoded = key_id.strip(), encoded.strip()
                if not sep:
                    return f"entry {number} is not of the form <key_id>:<base64 key>"
                if not _KEY_ID_RE.fullmatch(key_id):
                    return (
                        f"entry {number}: key id must be 1-32 characters of "
                        "A-Z, a-z, 0-9, '_' or '-'"
                    )
                key = _decode_key_text(encoded)
                if key is None:
                    return f"key {key_id!r} is not valid base64"
                if len(key) != _KEY_LEN:
                    return (
                        f"key {key_id!r} decodes to {len(key)} bytes, "
                        f"expected {_KEY_LEN}"
                    )
                entries.append((key_id, key))
        if not entries:
            return "contains no keys"
        return entries

    @property
    def active_key_id(self) -> str:
        """Id of the key new values are encrypted with."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """All key ids, active first."""
        return self._ids

    def encrypt(
        self, plaintext: str, *, table: str, column: str, row_id: str, user_id: str
    ) -> str:
        """Seal ``plaintext`` for exactly this table, column, row and user."""
        if not isinstance(plaintext, str):
            raise TypeError(f"plaintext must be str, got {type(plaintext).__name__}")
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            data = None
        if data is None:
            raise ValueError("plaintext contains characters that are not valid UTF-8")
        kid = self._active
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aeads[kid].encrypt(
            nonce, data, _aad(kid, table, column, row_id, user_id)
        )
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{_PREFIX}{kid}.{body}"

    def decrypt(
        self, envelope: str, *, table: str, column: str, row_id: str, user_id: str
    ) -> str:
        """Open an envelope made by :meth:`encrypt` for the same context.

        Any failure raises DecryptionError; the value is never passed through,
        so a ciphertext can never be mistaken for the secret itself.
        """
        aad_parts = (table, column, row_id, user_id)
        kid: str | None = None
        reason: str | None = None
        plaintext: str | None = None
        if not isinstance(envelope, str):
            reason = f"value is {type(envelope).__name__}, not an encrypted envelope"
        else:
            version, _, rest = envelope.partition(".")
            candidate, dot, body = rest.partition(".")
            # Only trust the id slot of a v1 value: in anything else it could
            # be a fragment of a plaintext secret, which must not be echoed.
            if version == _VERSION and _KEY_ID_RE.fullmatch(candidate):
                kid = candidate
            if version != _VERSION:
                reason = "not an encrypted envelope (unknown format version)"
            elif kid is None or not dot:
                reason = "malformed envelope"
            elif kid not in self._aeads:
                reason = "key id is not in the key ring"
            else:
                raw = _b64url_decode(body)
                if raw is None:
                    reason = "envelope body is not valid base64url"
                elif len(raw) < _MIN_BODY_BYTES:
                    reason = "envelope is truncated"
                else:
                    aad = _aad(kid, *aad_parts)
                    try:
                        data = self._aeads[kid].decrypt(
                            raw[:_NONCE_LEN], raw[_NONCE_LEN:], aad
                        )
                    except InvalidTag:
                        data = None
                    if data is None:
                        reason = (
                            "authentication failed (tampered, truncated, moved to "
                            "another row/column/user, or wrong key)"
                        )
                    else:
                        try:
                            plaintext = data.decode("utf-8")
                        except UnicodeDecodeError:
                            plaintext = None
                        if plaintext is None:
                            reason = "decrypted value is not valid UTF-8"
        if plaintext is not None:
            return plaintext
        # Raised outside every except block so no exception holding secret
        # bytes (e.g. UnicodeDecodeError.object) is chained onto this one.
        raise DecryptionError(
            f"cannot decrypt {table}.{column} for row {row_id!r} "
            f"(key id {kid!r}): {reason}"
        )

    def key_id_of(self, envelope: str) -> str:
        """Key id an envelope was sealed with (syntactic, no decryption)."""
        if not is_envelope(envelope):
            raise DecryptionError("value is not an encrypted envelope")
        return envelope[len(_PREFIX) :].partition(".")[0]

    def derive_subkey(self, purpose: str, *, key_id: str | None = None) -> bytes:
        """32-byte subkey for a non-column use (e.g. MFA secrets).

        Derived from the active key unless ``key_id`` is given (needed to read
        data made before a rotation). ``"credentials"`` is reserved for column
        encryption and refused, so no caller can obtain that key.
        """
        if not isinstance(purpose, str) or not purpose:
            raise ValueError("purpose must be a non-empty str")
        if purpose == _COLUMN_PURPOSE:
            raise ValueError(f"purpose {_COLUMN_PURPOSE!r} is reserved")
        kid = self._active if key_id is None else key_id
        if kid not in self._keys:
            raise KeyConfigError(f"key id {kid!r} is not in the key ring")
        return _hkdf(self._keys[kid], purpose)

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, keys={self._ids!r})"
