import sys

from orchestrator_db import rotation
from orchestrator_db.commands._connect import connect, run
from orchestrator_db.commands._report import print_format_counts, print_key_counts
from orchestrator_db.crypto.data_keys import DataKey, list_data_keys
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.crypto.providers import key_ring_for, uses_transit


async def _status() -> tuple[KeyRing, dict[tuple[str, str], int], list[DataKey]]:
    connection = await connect()
    try:
        data_keys = await list_data_keys(connection) if uses_transit() else []
        key_ring = await key_ring_for(connection)
        return key_ring, await rotation.envelope_counts(connection), data_keys
    finally:
        await connection.close()


def _print_data_keys(data_keys: list[DataKey], counts: dict[str, int]) -> None:
    print("data keys (provider transit):")
    for key in data_keys:
        role = "active" if key.is_primary else "prepared" if key.state == "enabled" else ""
        print(
            f"  {key.key_id:<20} {key.provider:<8} {key.state:<10} {role:<9} "
            f"{key.transit_key_name} v{key.transit_key_version}  "
            f"{counts.get(key.key_id, 0)} stored values"
        )


def key_status() -> None:
    """Show how many stored secrets each key id and format version holds, so old keys can be retired.

    With the transit provider it also lists each data key's state and
    Transit key version.

    Counts both secret columns of every user's credentials, so run it as the
    operator role (BYPASSRLS). Names the ring keys no value needs any more,
    and values still in plaintext. Exits non-zero if a key that encrypts
    stored values is missing from the key ring: those credentials cannot be
    decrypted until it is put back.
    """
    key_ring, envelope_counts, data_keys = run(_status)
    counts = rotation.by_key(envelope_counts)
    if data_keys:
        _print_data_keys(data_keys, counts)
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
