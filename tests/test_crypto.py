"""Tests for orchestrator_db.crypto.keyring (pure crypto, no database)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry, is_envelope
from orchestrator_db.errors import DecryptionError, KeyConfigError

SECRET = "AKIA-very-secret-api-key-0123456789abcd"
CTX = dict(table="broker_credential", column="api_key", row_id="17", user_id="u-1")


class Ring(KeyRing):
    """A KeyRing whose binding is given as the four named parts these tests use."""

    __slots__ = ()

    def encrypt(self, plaintext: str, **ctx: str) -> str:  # type: ignore[override]
        return super().encrypt(plaintext, binding=_binding(**ctx))

    def decrypt(self, envelope: str, **ctx: str) -> str:  # type: ignore[override]
        label = f"{ctx['table']}.{ctx['column']} for row {ctx['row_id']!r}"
        return super().decrypt(envelope, binding=_binding(**ctx), label=label)


def _binding(*, table: str, column: str, row_id: str, user_id: str) -> tuple[str, ...]:
    return (table, column, row_id, user_id)

KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(100, 132))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture
def ring() -> KeyRing:
    return Ring([("kid1", KEY_OLD)])


@pytest.fixture
def rotated() -> KeyRing:
    return Ring([("kid2", KEY_NEW), ("kid1", KEY_OLD)])


def body_bytes(envelope: str) -> bytes:
    body = envelope.split(".", 2)[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def with_body(envelope: str, raw: bytes) -> str:
    head = envelope.rsplit(".", 1)[0]
    return head + "." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_clean(exc: BaseException, *secrets: str) -> None:
    message = str(exc)
    for secret in secrets:
        assert secret not in message
    for key in (KEY_OLD, KEY_NEW):
        assert b64(key) not in message
        assert key.hex() not in message


# --- round trip -----------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    ["", "x", SECRET, "ключ-密钥-🔑", "nul\x00in\x00the\x00middle", "a" * 1_000_000],
    ids=["empty", "one", "ascii", "unicode", "nul", "1mb"],
)
def test_round_trip(ring: KeyRing, plaintext: str) -> None:
    """Make sure encrypt then decrypt returns exactly the original text."""
    envelope = ring.encrypt(plaintext, **CTX)
    assert envelope.startswith("v2.kid1.")
    assert is_envelope(envelope)
    assert ring.decrypt(envelope, **CTX) == plaintext


@settings(max_examples=75, deadline=None)
@given(plaintext=st.text(), row_id=st.text(max_size=20), user_id=st.text(max_size=20))
def test_round_trip_property(plaintext: str, row_id: str, user_id: str) -> None:
    """Make sure any text round-trips for any row and user id."""
    ring = Ring([("kid1", KEY_OLD)])
    ctx = dict(table="t", column="c", row_id=row_id, user_id=user_id)
    envelope = ring.encrypt(plaintext, **ctx)
    assert is_envelope(envelope)
    assert ring.decrypt(envelope, **ctx) == plaintext


def test_envelope_does_not_contain_plaintext(ring: KeyRing) -> None:
    """Make sure the stored value does not leak the plaintext."""
    envelope = ring.encrypt(SECRET, **CTX)
    assert SECRET not in envelope
    assert SECRET.encode() not in body_bytes(envelope)


def test_nonce_is_fresh(ring: KeyRing) -> None:
    """Make sure encrypting the same value twice gives different envelopes and nonces."""
    first, second = ring.encrypt(SECRET, **CTX), ring.encrypt(SECRET, **CTX)
    assert first != second
    assert body_bytes(first)[:12] != body_bytes(second)[:12]


# --- failures -------------------------------------------------------------


def test_flipped_bit_anywhere_in_body_fails(ring: KeyRing) -> None:
    """Make sure flipping any single bit of nonce, ciphertext or tag is rejected."""
    envelope = ring.encrypt("short", **CTX)
    raw = body_bytes(envelope)
    for i in range(len(raw) * 8):
        tampered = bytearray(raw)
        tampered[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptionError) as info:
            ring.decrypt(with_body(envelope, bytes(tampered)), **CTX)
        assert_clean(info.value, "short")


@pytest.mark.parametrize("plaintext", ["a", "ab", "abc"])
def test_changed_character_anywhere_in_body_fails(
    ring: KeyRing, plaintext: str
) -> None:
    """Make sure changing any base64 character (incl. unused last bits) is rejected."""
    envelope = ring.encrypt(plaintext, **CTX)
    start = envelope.rindex(".") + 1
    for i in range(start, len(envelope)):
        for replacement in set("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_") - {envelope[i]}:
            tampered = envelope[:i] + replacement + envelope[i + 1 :]
            with pytest.raises(DecryptionError):
                ring.decrypt(tampered, **CTX)


@pytest.mark.parametrize("cut", [1, 4, 16, 17, 40])
def test_truncation_fails(ring: KeyRing, cut: int) -> None:
    """Make sure a truncated envelope is rejected."""
    envelope = ring.encrypt(SECRET, **CTX)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(envelope[:-cut], **CTX)
    assert_clean(info.value, SECRET)


def test_truncated_raw_body_fails(ring: KeyRing) -> None:
    """Make sure bodies shorter than nonce plus tag, or missing the tag, are rejected."""
    envelope = ring.encrypt(SECRET, **CTX)
    raw = body_bytes(envelope)
    for size in (0, 11, 12, 27, len(raw) - 1):
        with pytest.raises(DecryptionError):
            ring.decrypt(with_body(envelope, raw[:size]), **CTX)


@pytest.mark.parametrize(
    "field, other",
    [
        ("row_id", "18"),
        ("column", "secret_key"),
        ("user_id", "u-2"),
        ("table", "other_table"),
    ],
)
def test_moved_envelope_fails(ring: KeyRing, field: str, other: str) -> None:
    """Make sure an envelope copied to another row, column, user or table is rejected."""
    envelope = ring.encrypt(SECRET, **CTX)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(envelope, **{**CTX, field: other})
    assert_clean(info.value, SECRET)


def test_aad_parts_are_unambiguous(ring: KeyRing) -> None:
    """Make sure shifting characters between context parts is rejected."""
    envelope = ring.encrypt(SECRET, table="ab", column="c", row_id="1", user_id="2")
    with pytest.raises(DecryptionError):
        ring.decrypt(envelope, table="a", column="bc", row_id="1", user_id="2")
    with pytest.raises(DecryptionError):
        ring.decrypt(envelope, table="ab", column="c", row_id="12", user_id="")


def test_unknown_key_id_fails(ring: KeyRing) -> None:
    """Make sure an envelope naming a key id not in the ring is rejected."""
    envelope = ring.encrypt(SECRET, **CTX).replace("v2.kid1.", "v2.kid9.", 1)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(envelope, **CTX)
    assert "kid9" in str(info.value)
    assert_clean(info.value, SECRET)


def test_relabelled_key_id_fails(rotated: KeyRing) -> None:
    """Make sure relabelling an envelope with another ring key id is rejected."""
    envelope = rotated.encrypt(SECRET, **CTX).replace("v2.kid2.", "v2.kid1.", 1)
    with pytest.raises(DecryptionError):
        rotated.decrypt(envelope, **CTX)


def test_key_removed_from_ring_fails(rotated: KeyRing) -> None:
    """Make sure dropping a key from the ring makes its envelopes undecryptable."""
    old = Ring([("kid1", KEY_OLD)]).encrypt(SECRET, **CTX)
    assert rotated.decrypt(old, **CTX) == SECRET
    with pytest.raises(DecryptionError) as info:
        Ring([("kid2", KEY_NEW)]).decrypt(old, **CTX)
    assert_clean(info.value, SECRET)


def test_wrong_key_same_id_fails(ring: KeyRing) -> None:
    """Make sure a different key under the same id is rejected."""
    envelope = ring.encrypt(SECRET, **CTX)
    with pytest.raises(DecryptionError):
        Ring([("kid1", KEY_NEW)]).decrypt(envelope, **CTX)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        SECRET,
        "v1",
        "v1.",
        "v1.kid1",
        "v1.kid1.",
        "v2.kid1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.kid.1.AAAA",
        "v1.kid1.not base64!",
        "v1.kid1.AAAAA",
        "v1.kid1.AAAA====",
        "v1..AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1." + "k" * 33 + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.kid1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
        "v1.kid1.ÄAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_garbage_fails(ring: KeyRing, garbage: str) -> None:
    """Make sure non-envelope strings raise DecryptionError and are never returned."""
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(garbage, **CTX)
    assert_clean(info.value, SECRET)


@pytest.mark.parametrize("value", [None, 42, b"v1.kid1.AAAA", ["v1"], 3.5])
def test_non_str_fails(ring: KeyRing, value: object) -> None:
    """Make sure non-str input raises DecryptionError."""
    with pytest.raises(DecryptionError):
        ring.decrypt(value, **CTX)  # type: ignore[arg-type]


def test_plaintext_with_dots_is_not_echoed(ring: KeyRing) -> None:
    """Make sure a plaintext left in the column is not echoed as a 'key id'."""
    leaked = "abc.SuperSecretPart.xyz"
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(leaked, **CTX)
    assert_clean(info.value, leaked, "SuperSecretPart")


def test_error_message_names_context(ring: KeyRing) -> None:
    """Make sure DecryptionError names table.column, row id and key id, not secrets."""
    envelope = ring.encrypt(SECRET, **CTX)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt(envelope, **{**CTX, "row_id": "99"})
    message = str(info.value)
    assert "broker_credential.api_key" in message
    assert "99" in message
    assert "kid1" in message
    assert envelope.split(".", 2)[2] not in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_clean(info.value, SECRET)


# --- rotation -------------------------------------------------------------


def test_rotation(rotated: KeyRing) -> None:
    """Make sure a rotated ring reads old envelopes and re-encrypts them under the new key."""
    old = Ring([("kid1", KEY_OLD)]).encrypt(SECRET, **CTX)
    assert rotated.active_key_id == "kid2"
    assert rotated.key_ids == ("kid2", "kid1")
    assert rotated.key_id_of(old) == "kid1"
    assert rotated.key_id_of(old) != rotated.active_key_id
    plaintext = rotated.decrypt(old, **CTX)
    assert plaintext == SECRET
    fresh = rotated.encrypt(plaintext, **CTX)
    assert rotated.key_id_of(fresh) == "kid2"
    assert rotated.decrypt(fresh, **CTX) == SECRET


def test_key_id_of_rejects_non_envelopes(ring: KeyRing) -> None:
    """Make sure key_id_of raises DecryptionError on non-envelopes."""
    for value in (SECRET, "", "v1.kid1.AAAA", None):
        with pytest.raises(DecryptionError):
            ring.key_id_of(value)  # type: ignore[arg-type]


def test_is_envelope() -> None:
    """Make sure is_envelope accepts well-formed envelopes and rejects anything else."""
    body = base64.urlsafe_b64encode(bytes(28)).rstrip(b"=").decode()
    assert is_envelope(f"v1.kid1.{body}")
    assert not is_envelope(f"v1.kid1.{body[:-1]}")
    assert is_envelope(f"v2.kid1.{body}")
    assert not is_envelope(f"v3.kid1.{body}")
    assert not is_envelope(f"v1.bad.id.{body}")
    assert not is_envelope(SECRET)
    assert not is_envelope(None)  # type: ignore[arg-type]


# --- key ring construction and parsing -----------------------------------


def test_parse(rotated: KeyRing) -> None:
    """Make sure parse reads comma/newline separated entries, comments and all base64 forms."""
    url_nopad = base64.urlsafe_b64encode(KEY_NEW).rstrip(b"=").decode()
    text = f"""
        # active key first
        kid2:{url_nopad} ,
        kid1 : {b64(KEY_OLD)}
    """
    parsed = Ring.parse(text)
    assert parsed.key_ids == ("kid2", "kid1")
    envelope = rotated.encrypt(SECRET, **CTX)
    assert parsed.decrypt(envelope, **CTX) == SECRET
    one_line = Ring.parse(f"kid2:{b64(KEY_NEW)},kid1:{b64(KEY_OLD)}")
    assert one_line.decrypt(envelope, **CTX) == SECRET


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n# only a comment\n",
        f"kid1:{b64(KEY_OLD)[:-3]}!!",
        f"kid1:{b64(bytes(16))}",
        f"kid1:{b64(bytes(range(64)))}",
        f"kid1:{b64(KEY_OLD)},kid1:{b64(KEY_NEW)}",
        f"bad.id:{b64(KEY_OLD)}",
        f"{'k' * 33}:{b64(KEY_OLD)}",
        f":{b64(KEY_OLD)}",
        b64(KEY_OLD),
        f"kid1:{b64(KEY_OLD)},kid2:{b64(KEY_OLD)}",
    ],
    ids=[
        "empty",
        "comment-only",
        "bad-base64",
        "too-short",
        "too-long",
        "duplicate-id",
        "dot-in-id",
        "long-id",
        "empty-id",
        "no-id",
        "same-key-twice",
    ],
)
def test_parse_errors(text: str) -> None:
    """Make sure malformed key text raises KeyConfigError naming the source, without key material."""
    with pytest.raises(KeyConfigError) as info:
        KeyRing.parse(text, source="MY_KEYS_FILE")
    message = str(info.value)
    assert "MY_KEYS_FILE" in message
    assert "piccolo orchestrator_db generate_key" in message
    assert_clean(info.value)
    for entry in text.replace(",", "\n").splitlines():
        secret_part = entry.partition(":")[2].strip() or entry.strip()
        if len(secret_part) > 8:
            assert secret_part not in message
            assert secret_part[:8] not in message


def test_parse_non_str_raises() -> None:
    """Make sure an unset (None) key setting raises KeyConfigError."""
    with pytest.raises(KeyConfigError, match="ORCHESTRATOR_DB_KEYS"):
        KeyRing.parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [("kid1", bytes(31))],
        [("kid1", "x" * 32)],
        [("kid1", KEY_OLD), ("kid1", KEY_NEW)],
        [("bad id", KEY_OLD)],
        [("", KEY_OLD)],
        [("kid1",)],
    ],
)
def test_constructor_validation(keys: list) -> None:
    """Make sure KeyRing rejects empty rings, wrong key sizes and bad or duplicate ids."""
    with pytest.raises(KeyConfigError) as info:
        KeyRing(keys)
    assert_clean(info.value)


def test_repr_hides_keys(rotated: KeyRing) -> None:
    """Make sure repr/str show key ids only, never key bytes."""
    text = repr(rotated)
    assert text == "KeyRing(active='kid2', keys=('kid2', 'kid1'))"
    assert str(rotated) == text
    for key in (KEY_OLD, KEY_NEW):
        assert repr(key) not in text
        assert b64(key) not in text
        assert key.hex() not in text


def test_derive_subkey(rotated: KeyRing) -> None:
    """Make sure subkeys are 32 bytes, stable, per purpose, per key and never the raw key."""
    mfa = rotated.derive_subkey("mfa")
    assert len(mfa) == 32
    assert mfa == rotated.derive_subkey("mfa")
    assert mfa != rotated.derive_subkey("mfa2")
    assert mfa not in (KEY_NEW, KEY_OLD)
    assert mfa == Ring([("kid2", KEY_NEW)]).derive_subkey("mfa")
    assert rotated.derive_subkey("mfa", key_id="kid1") != mfa
    with pytest.raises(ValueError):
        rotated.derive_subkey("credentials")
    with pytest.raises(ValueError):
        rotated.derive_subkey("")
    with pytest.raises(KeyConfigError):
        rotated.derive_subkey("mfa", key_id="nope")


def test_generate_key_entry() -> None:
    """Make sure generated entries parse, carry a valid default id and are random."""
    entry = generate_key_entry()
    kid, _, encoded = entry.partition(":")
    assert kid.startswith("k20") and len(kid) == len("k20261125T070102")
    assert len(base64.b64decode(encoded)) == 32
    assert KeyRing.parse(entry).active_key_id == kid
    assert generate_key_entry("kid9").startswith("kid9:")
    assert generate_key_entry("a") != generate_key_entry("a")
    with pytest.raises(KeyConfigError):
        generate_key_entry("bad.id")
    ring = KeyRing.parse(f"{generate_key_entry('new')}\n{generate_key_entry('old')}")
    assert ring.key_ids == ("new", "old")


def test_encrypt_rejects_bad_input(ring: KeyRing) -> None:
    """Make sure encrypt refuses non-str plaintext/context and lone surrogates."""
    with pytest.raises(TypeError):
        ring.encrypt(b"bytes", **CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ring.encrypt(SECRET, **{**CTX, "row_id": 17})  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        ring.encrypt("x\ud800y", **CTX)
    assert "x\ud800y" not in str(info.value)
