import sys

from orchestrator_db.commands._connect import connect, run
from orchestrator_db.crypto.keyring import generate_key_entry


async def _create_transit_key(key_id: str | None) -> str:
    from orchestrator_db.crypto.data_keys import create_data_key
    from orchestrator_db.crypto.providers import transit_client

    transit = transit_client()
    connection = await connect()
    try:
        return await create_data_key(connection, transit, key_id)
    finally:
        await connection.close()


def generate_key(key_id: str = "", provider: str = "env") -> None:
    """Make a new encryption key: a key-ring entry to print, or a Transit-wrapped data key.

    env (default): print a key-ring entry ("<id>:<base64 32 bytes>"). Put it
    first in ORCHESTRATOR_DB_KEYS (comma-separated) to make it the key that
    encrypts; keep older entries after it until `key_status` shows they are
    unused. Needs no database.

    transit: Vault/OpenBao Transit generates a data key; only its wrapped
    form is stored (DATABASE_URL, the operator role). It is a prepared key:
    restart the app's processes so each loads it, then `activate_key`.

    :param key_id:
        An id for the key (letters, digits, - and _); default: k<UTC timestamp>.
    :param provider:
        env (print an entry) or transit (store a wrapped data key).
    """
    if provider == "transit":
        created = run(lambda: _create_transit_key(key_id or None))
        print(
            f"prepared data key {created} (wrapped by Transit). Restart the app's "
            "processes so each loads it, then run "
            f"`piccolo orchestrator_db activate_key --key_id={created}`"
        )
        return
    if provider not in ("env", "file"):
        print("error: --provider must be env, file or transit", file=sys.stderr)
        raise SystemExit(2)
    print(generate_key_entry(key_id or None))
