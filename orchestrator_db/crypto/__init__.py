"""Encryption of stored secrets.

- ``keyring``: the key ring and its AES-256-GCM envelope format (no database imports);
- ``envelopes``: what a credential secret is bound to (its table, column, row and owner);
- ``providers``: where the process's key ring comes from (settings).
"""

from orchestrator_db.crypto.keyring import KeyRing, generate_key_entry, is_envelope

__all__ = ["KeyRing", "generate_key_entry", "is_envelope"]
