"""The process's key ring, loaded from settings at first use."""

from __future__ import annotations

from pathlib import Path

from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.errors import KeyConfigError
from orchestrator_db.settings import key_settings

_HINT = "run `piccolo orchestrator_db generate_key` to make one"

_key_ring: KeyRing | None = None


def load_key_ring() -> KeyRing:
    """Read ORCHESTRATOR_DB_KEYS, else the file named by ORCHESTRATOR_DB_KEYS_FILE."""
    settings = key_settings()
    if settings.keys:
        return KeyRing.parse(settings.keys, source="ORCHESTRATOR_DB_KEYS")
    if settings.keys_file:
        path = Path(settings.keys_file)
        try:
            text = path.read_text()
        except OSError as error:
            raise KeyConfigError(
                f"ORCHESTRATOR_DB_KEYS_FILE={path} cannot be read ({error.strerror}); {_HINT}"
            ) from None
        return KeyRing.parse(text, source=f"ORCHESTRATOR_DB_KEYS_FILE ({path})")
    raise KeyConfigError(
        "no encryption key configured: set ORCHESTRATOR_DB_KEYS or "
        f"ORCHESTRATOR_DB_KEYS_FILE; {_HINT}"
    )


def get_key_ring() -> KeyRing:
    global _key_ring
    if _key_ring is None:
        _key_ring = load_key_ring()
    return _key_ring


def use_key_ring(key_ring: KeyRing | None) -> None:
    """Replace the process's ring (None reloads from settings at next use).

    For operators' tools and tests that swap keys without restarting.
    """
    global _key_ring
    _key_ring = key_ring
