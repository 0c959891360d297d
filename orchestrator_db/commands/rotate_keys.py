from orchestrator_db import rotation
from orchestrator_db.commands._connect import connect, run
from orchestrator_db.commands._report import (
    exit_if_unfinished,
    print_format_counts,
    print_key_counts,
    print_progress,
)
from orchestrator_db.crypto.providers import key_ring_for
from orchestrator_db.errors import ConfigurationError, KeyConfigError


async def _rotate(batch_size: int) -> rotation.ReencryptResult:
    rotation.check_batch_size(batch_size)
    connection = await connect()
    try:
        key_ring = await key_ring_for(connection)
        before = await rotation.key_status(connection)
        print_key_counts("before", before, key_ring)
        missing = rotation.missing_key_ids(before, key_ring)
        if missing:
            raise KeyConfigError(
                f"values under key id(s) {', '.join(missing)} cannot be re-encrypted: "
                "those keys are not in the key ring. Add them to ORCHESTRATOR_DB_KEYS "
                "after the active key and run again"
            )
        if before.get(rotation.PLAINTEXT):
            raise ConfigurationError(
                f"{before[rotation.PLAINTEXT]} stored values are not encrypted; run "
                "`piccolo orchestrator_db encrypt_plaintext` first"
            )
        print(
            f"re-encrypting under key {key_ring.active_key_id}, {batch_size} rows per batch",
            flush=True,
        )
        result = await rotation.rotate_keys(
            connection, key_ring, batch_size=batch_size, progress=print_progress
        )
        print()
        resealed = await rotation.rotate_mfa_secrets(connection, key_ring)
        print(f"{resealed} MFA secrets re-sealed under key {key_ring.active_key_id}")
        after = await rotation.envelope_counts(connection)
        print_key_counts("after", rotation.by_key(after), key_ring)
        print_format_counts(rotation.format_counts(after))
        return result
    finally:
        await connection.close()


def rotate_keys(batch_size: int = rotation.DEFAULT_BATCH_SIZE) -> None:
    """Re-encrypt every stored secret under the active key (the first in the ring), as format v2.

    v1 envelopes are re-sealed as v2 even under the active key, and so are
    the admin's MFA secrets (including those of the format before v2).

    Put a new key first in ORCHESTRATOR_DB_KEYS (`generate_key` makes one),
    keep the old keys after it, deploy that ring to every process, then run
    this as the operator role (BYPASSRLS). It works online, in small
    transactions that skip rows writers hold, and may be interrupted and run
    again: a re-run touches only what is left. Prints the values per key id
    before and after; `key_status` then says which keys can be retired.

    :param batch_size:
        Rows re-encrypted per transaction (--batch_size=N).
    """
    result = run(lambda: _rotate(batch_size))
    print(
        f"{result.rows} rows ({result.values} values) re-encrypted under key "
        f"{result.key_id} in {result.batches} batches"
    )
    exit_if_unfinished(result, "rotate_keys")
