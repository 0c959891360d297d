"""The key ring and its one envelope format (AES-256-GCM).

An envelope is ``v2.<key_id>.<base64url(nonce | ciphertext | tag)>``. The
associated data (AAD) is the format version, the key id, then a *binding*:
the fields that identify what the secret belongs to, every part
length-prefixed so no two bindings share an AAD. A ciphertext moved to
anything with another binding fails to decrypt instead of silently yielding
someone else's secret. What a credential is bound to is defined once, in
``envelopes.py``; this module only knows a binding as a sequence of strings.

Each use of the keys has its own HKDF *purpose* (``credentials`` for the
credential columns, ``mfa`` for the admin's TOTP secrets): one raw key never
encrypts anything directly, and a ciphertext of one purpose cannot be opened
as another.

Format history: ``v1.<key_id>.<body>`` bound only table, column, row id and
user id. v1 envelopes still decrypt, bound as they were, when the caller
passes that older binding (``v1_binding``); ``rotate_keys`` re-seals them as
v2. Nothing writes v1 any more.

Keys live in a :class:`KeyRing`: the first key encrypts, every key decrypts,
which is what lets keys be rotated without downtime.

The envelope's shape is defined here once (:data:`ENVELOPE_PATTERN`,
:func:`envelope_sql_predicate`); the rotation SQL and the tests derive theirs
from it. Only the frozen migrations keep their own copies.

This module deliberately imports nothing from the database side, so it can be
tested, audited and used from CLI tools on its own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from orchestrator_db.errors import DecryptionError, KeyConfigError

__all__ = [
    "CREDENTIALS_PURPOSE",
    "CURRENT_VERSION",
    "ENVELOPE_PATTERN",
    "FORMAT_VERSIONS",
    "KeyRing",
    "envelope_sql_predicate",
    "envelope_version",
    "generate_key_entry",
    "is_envelope",
]

#: Every format version a ring can open, oldest first; the last one is written.
FORMAT_VERSIONS = ("v1", "v2")
CURRENT_VERSION = FORMAT_VERSIONS[-1]
_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_MIN_BODY_BYTES = _NONCE_LEN + _TAG_LEN
#: The shortest body, in base64url characters, that holds _MIN_BODY_BYTES.
MIN_BODY_CHARS = -(-_MIN_BODY_BYTES * 4 // 3)
_HKDF_INFO_PREFIX = b"orchestrator_db/"
#: The HKDF purpose of the credential columns.
CREDENTIALS_PURPOSE = "credentials"
_GENERATE_HINT = "run `piccolo orchestrator_db generate_key` to make one"

_KEY_ID_CHARS = "A-Za-z0-9_-"
_KEY_ID_MAX = 32
_KEY_ID_RE = re.compile(f"[{_KEY_ID_CHARS}]{{1,{_KEY_ID_MAX}}}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
#: An envelope, syntactically: version, key id, body (groups 1, 2, 3).
ENVELOPE_PATTERN = (
    f"({'|'.join(FORMAT_VERSIONS)})"
    rf"\.([{_KEY_ID_CHARS}]{{1,{_KEY_ID_MAX}}})"
    rf"\.([{_KEY_ID_CHARS}]{{{MIN_BODY_CHARS},}})"
)
_ENVELOPE_RE = re.compile(ENVELOPE_PATTERN)
_STD_B64 = bytes.maketrans(b"-_", b"+/")


def envelope_sql_predicate(column: str) -> str:
    """The SQL twin of :func:`is_envelope`, for a column or expression.

    Lengths are checked with split_part, not bounded regex repeats ({1,32}),
    which PostgreSQL's regex engine runs 15x slower. Bracketed dots keep the
    pattern free of backslashes, so no string-escaping mode matters, and
    the expression uses no braces, so Piccolo's raw() can take it too.
    Every function is schema-qualified.
    """
    versions = "|".join(FORMAT_VERSIONS)
    shape = f"'^({versions})[.][{_KEY_ID_CHARS}]+[.][{_KEY_ID_CHARS}]+$'"
    key_id = f"pg_catalog.split_part({column}, '.', 2)"
    body = f"pg_catalog.split_part({column}, '.', 3)"
    return (
        f"({column} OPERATOR(pg_catalog.~) {shape} "
        f"AND pg_catalog.length({key_id}) <= {_KEY_ID_MAX} "
        f"AND pg_catalog.length({body}) >= {MIN_BODY_CHARS} "
        f"AND pg_catalog.length({body}) % 4 <> 1)"
    )


def _hkdf(key: bytes, purpose: str) -> bytes:
    """Derive a 32-byte subkey so one raw key can serve unrelated uses safely."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=None,
        info=_HKDF_INFO_PREFIX + purpose.encode("utf-8"),
    ).derive(key)


def _aad(version: str, key_id: str, binding: Sequence[str]) -> bytes:
    """Length-prefix every part so no two different bindings share an AAD."""
    out = bytearray()
    for part in (version, key_id, *binding):
        if not isinstance(part, str):
            raise TypeError(
                f"encryption binding must be str, got {type(part).__name__}"
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
    return envelope_version(value) is not None


def envelope_version(value: object) -> str | None:
    """``"v1"`` or ``"v2"`` for a value shaped like an envelope, else None."""
    if not isinstance(value, str):
        return None
    m = _ENVELOPE_RE.fullmatch(value)
    if m is None or len(m.group(3)) % 4 == 1:
        return None
    return m.group(1)


def generate_key_entry(key_id: str | None = None) -> str:
    """Return a fresh ``"<key_id>:<base64 32 random bytes>"`` ring entry.

    The default id is the UTC timestamp (``k20261125T070102``) so ids sort by
    age and a rotation never reuses one by accident.
    """
    key_id = generate_key_id(key_id)
    return f"{key_id}:{base64.b64encode(os.urandom(_KEY_LEN)).decode('ascii')}"


def generate_key_id(key_id: str | None = None) -> str:
    """``key_id`` checked, or a new one from the UTC time (``k20261125T070102``)."""
    if key_id is None:
        key_id = "k" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise KeyConfigError(
            "key id must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return key_id


class KeyRing:
    """Encryption keys for credential columns; the first key is the active one.

    Immutable after construction. Per-key AES-GCM objects are built up front
    so encrypt/decrypt stay in the microsecond range.
    """

    __slots__ = ("_active", "_ids", "_keys", "_aeads")

    _aeads: dict[tuple[str, str], AESGCM]

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
            (CREDENTIALS_PURPOSE, kid): AESGCM(_hkdf(key, CREDENTIALS_PURPOSE))
            for kid, key in raw_keys.items()
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

    def _aead(self, purpose: str, key_id: str) -> AESGCM:
        aead = self._aeads.get((purpose, key_id))
        if aead is None:
            if not isinstance(purpose, str) or not purpose:
                raise ValueError("purpose must be a non-empty str")
            aead = AESGCM(_hkdf(self._keys[key_id], purpose))
            self._aeads[(purpose, key_id)] = aead
        return aead

    def encrypt(
        self, plaintext: str, *, binding: Sequence[str], purpose: str = CREDENTIALS_PURPOSE
    ) -> str:
        """Seal ``plaintext`` as a v2 envelope for exactly this binding, under the active key."""
        if not isinstance(plaintext, str):
            raise TypeError(f"plaintext must be str, got {type(plaintext).__name__}")
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            data = None
        if data is None:
            raise ValueError("plaintext contains characters that are not valid UTF-8")
        kid = self._active
        aad = _aad(CURRENT_VERSION, kid, binding)
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aead(purpose, kid).encrypt(nonce, data, aad)
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{CURRENT_VERSION}.{kid}.{body}"

    def decrypt(
        self,
        envelope: str,
        *,
        binding: Sequence[str],
        v1_binding: Sequence[str] | None = None,
        purpose: str = CREDENTIALS_PURPOSE,
        label: str | Callable[[], str] = "value",
    ) -> str:
        """Open an envelope made by :meth:`encrypt` for the same binding.

        A v1 envelope opens only if ``v1_binding`` (what v1 bound) is given.
        Any failure raises DecryptionError naming ``label`` (never the value;
        a callable label is only called then, off the hot path);
        the value is never passed through, so a ciphertext can never be
        mistaken for the secret itself.
        """
        kid: str | None = None
        reason: str | None = None
        plaintext: str | None = None
        if not isinstance(envelope, str):
            reason = f"value is {type(envelope).__name__}, not an encrypted envelope"
        else:
            version, _, rest = envelope.partition(".")
            candidate, dot, body = rest.partition(".")
            known = version in FORMAT_VERSIONS
            # Only trust the id slot of a known format: in anything else it
            # could be a fragment of a plaintext secret, which must not be echoed.
            if known and _KEY_ID_RE.fullmatch(candidate):
                kid = candidate
            parts = binding if version == CURRENT_VERSION else v1_binding
            if not known:
                reason = "not an encrypted envelope (unknown format version)"
            elif kid is None or not dot:
                reason = "malformed envelope"
            elif parts is None:
                reason = f"format {version} is not accepted here"
            elif kid not in self._keys:
                reason = "key id is not in the key ring"
            else:
                raw = _b64url_decode(body)
                if raw is None:
                    reason = "envelope body is not valid base64url"
                elif len(raw) < _MIN_BODY_BYTES:
                    reason = "envelope is truncated"
                else:
                    aad = _aad(version, kid, parts)
                    try:
                        data = self._aead(purpose, kid).decrypt(
                            raw[:_NONCE_LEN], raw[_NONCE_LEN:], aad
                        )
                    except InvalidTag:
                        data = None
                    if data is None:
                        reason = (
                            "authentication failed (tampered, truncated, moved to "
                            "another row/column/user/account/type, or wrong key)"
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
        named = label() if callable(label) else label
        raise DecryptionError(f"cannot decrypt {named} (key id {kid!r}): {reason}")

    def key_id_of(self, envelope: str) -> str:
        """Key id an envelope was sealed with (syntactic, no decryption)."""
        if not is_envelope(envelope):
            raise DecryptionError("value is not an encrypted envelope")
        return envelope.split(".", 2)[1]

    def is_current(self, envelope: object) -> bool:
        """True for a well-formed current-format envelope under the active key."""
        return (
            envelope_version(envelope) == CURRENT_VERSION
            and isinstance(envelope, str)
            and envelope.split(".", 2)[1] == self._active
        )

    def derive_subkey(self, purpose: str, *, key_id: str | None = None) -> bytes:
        """32-byte subkey for a use outside the envelope format.

        Only the legacy MFA reader (``admin/auth.py``) still needs one.
        Derived from the active key unless ``key_id`` is given. The
        credentials purpose is reserved and refused, so no caller can obtain
        that key.
        """
        if not isinstance(purpose, str) or not purpose:
            raise ValueError("purpose must be a non-empty str")
        if purpose == CREDENTIALS_PURPOSE:
            raise ValueError(f"purpose {CREDENTIALS_PURPOSE!r} is reserved")
        kid = self._active if key_id is None else key_id
        if kid not in self._keys:
            raise KeyConfigError(f"key id {kid!r} is not in the key ring")
        return _hkdf(self._keys[kid], purpose)

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, keys={self._ids!r})"
