import sys

from orchestrator_db import rotation
from orchestrator_db.commands._connect import connect, run
from orchestrator_db.commands._report import print_format_counts, print_key_counts
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.crypto.providers import get_key_ring


async def _status() -> tuple[KeyRing, dict[tuple[str, str], int]]:
    key_ring = get_key_ring()
    connection = await connect()
    try:
        return key_ring, await rotation.envelope_counts(connection)
    finally:
        await connection.close()


def key_status() -> None:
    """Show how many stored secrets each key id and format version holds, so old keys can be retired.

    Counts both secret columns of every user's credentials, so run it as the
    operator role (BYPASSRLS). Names the ring keys no value needs any more,
    and values still in plaintext. Exits non-zero if a key that encrypts
    stored values is missing from the key ring: those credentials cannot be
    decrypted until it is put back.
    """
    key_ring, envelope_counts = run(_status)
    counts = rotation.by_key(envelope_counts)
    print_key_counts("key status", counts, key_ring)
    print_format_counts(rotation.format_counts(envelope_counts))
    retirable = rotation.retirable_key_ids(counts, key_ring)
    if retirable:
        print(f"can be retired (no stored value needs them): {', '.join(retirable)}")
    else:
        print("no key can be retired yet")
    if counts.get(rotation.PLAINTEXT):
        print(
            f"WARNING: {counts[rotation.PLAINTEXT]} stored values are not encrypted; "
            "run `piccolo orchestrator_db encrypt_plaintext`"
        )
    missing = rotation.missing_key_ids(counts, key_ring)
    if missing:
        unreadable = sum(counts[key_id] for key_id in missing)
        print(
            f"ERROR: key id(s) {', '.join(missing)} encrypt {unreadable} stored values "
            "but are missing from the key ring, so those credentials cannot be "
            "decrypted. Put the key(s) back in ORCHESTRATOR_DB_KEYS after the "
            "active key, then run `piccolo orchestrator_db rotate_keys`.",
            file=sys.stderr,
        )
        raise SystemExit(1)
