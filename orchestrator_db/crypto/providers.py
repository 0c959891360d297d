"""Where the process's key ring comes from: ``env``, ``file`` or ``transit``.

ORCHESTRATOR_DB_KEY_PROVIDER picks the provider; unset, it is ``env`` when
ORCHESTRATOR_DB_KEYS is set and ``file`` when ORCHESTRATOR_DB_KEYS_FILE is,
as before providers existed.

- ``env`` and ``file`` hold raw keys, and are read at first use.
- ``transit`` holds data keys wrapped by Vault/OpenBao Transit in a table
  of ours (see ``data_keys``). They are unwrapped once, when the pool opens
  (``connected()``/``open_pool()``), with one Transit call per key, so a
  process that cannot reach Transit fails at startup, and one that started
  never calls Transit again: encryption stays on the hot path's speed, and a
  Transit outage after startup stops nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.errors import KeyConfigError
from orchestrator_db.settings import key_settings, transit_settings

if TYPE_CHECKING:
    from orchestrator_db.crypto.transit import TransitClient

_HINT = "run `piccolo orchestrator_db generate_key` to make one"

_key_ring: KeyRing | None = None


def load_key_ring() -> KeyRing:
    """The env or file provider's ring; the transit ring is loaded by :func:`load_transit_key_ring`."""
    settings = key_settings()
    if settings.provider == "transit":
        raise KeyConfigError(
            "ORCHESTRATOR_DB_KEY_PROVIDER=transit: the key ring is loaded when the pool "
            "opens; use `async with connected():` (or `await open_pool()`) first"
        )
    if settings.provider == "env":
        if not settings.keys:
            raise KeyConfigError(f"ORCHESTRATOR_DB_KEYS is not set; {_HINT}")
        return KeyRing.parse(settings.keys, source="ORCHESTRATOR_DB_KEYS")
    if settings.provider == "file":
        if not settings.keys_file:
            raise KeyConfigError(f"ORCHESTRATOR_DB_KEYS_FILE is not set; {_HINT}")
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
        f"ORCHESTRATOR_DB_KEYS_FILE, or ORCHESTRATOR_DB_KEY_PROVIDER=transit; {_HINT}"
    )


def uses_transit() -> bool:
    return key_settings().provider == "transit"


def transit_client() -> TransitClient:
    """A Transit client from settings (imported here: env deployments never load hvac)."""
    from orchestrator_db.crypto.transit import TransitClient

    return TransitClient(transit_settings())


async def load_transit_key_ring(connection: asyncpg.Connection) -> KeyRing:
    """Unwrap the stored data keys through Transit and make them the process's ring."""
    from orchestrator_db.crypto.data_keys import load_transit_ring

    ring = await load_transit_ring(connection, transit_client())
    use_key_ring(ring)
    return ring


async def prepare_key_ring(connection: asyncpg.Connection) -> None:
    """At startup: load a transit ring now; env and file rings still load at first use."""
    if uses_transit() and _key_ring is None:
        await load_transit_key_ring(connection)


async def key_ring_for(connection: asyncpg.Connection) -> KeyRing:
    """The process's ring, for a command holding ``connection``: transit loads it through it."""
    await prepare_key_ring(connection)
    return get_key_ring()


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
