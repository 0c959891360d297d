from orchestrator_db import rotation
from orchestrator_db.commands._connect import connect, run
from orchestrator_db.commands._report import exit_if_unfinished, print_key_counts, print_progress
from orchestrator_db.crypto.providers import key_ring_for


async def _encrypt(batch_size: int) -> rotation.ReencryptResult:
    rotation.check_batch_size(batch_size)
    connection = await connect()
    try:
        key_ring = await key_ring_for(connection)
        print_key_counts("before", await rotation.key_status(connection), key_ring)
        result = await rotation.encrypt_plaintext(
            connection, key_ring, batch_size=batch_size, progress=print_progress
        )
        print()
        print_key_counts("after", await rotation.key_status(connection), key_ring)
        return result
    finally:
        await connection.close()


def encrypt_plaintext(batch_size: int = rotation.DEFAULT_BATCH_SIZE) -> None:
    """Encrypt stored api_key/secret_key values that are still plaintext.

    For databases of the original plan, which stored credentials in clear.
    Encrypts them under the active key, in small online transactions like
    `rotate_keys`; values that are already envelopes are left alone, so it
    may be interrupted and run again. Run it as the operator role
    (BYPASSRLS). Prints counts only, never a value.

    :param batch_size:
        Rows encrypted per transaction (--batch_size=N).
    """
    result = run(lambda: _encrypt(batch_size))
    print(
        f"{result.values} plaintext values in {result.rows} rows encrypted under "
        f"key {result.key_id} in {result.batches} batches"
    )
    exit_if_unfinished(result, "encrypt_plaintext")
