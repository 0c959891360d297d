from orchestrator_db import rotation
from orchestrator_db.commands._connect import connect, run
from orchestrator_db.crypto.data_keys import set_data_key_state

_MEANING = {
    "enabled": "it decrypts again from each process's next start",
    "disabled": "from each process's next start it decrypts nothing; enable it again "
    "if anything needed it, or destroy it once nothing did",
    "destroyed": "its wrapped key is deleted for good",
}


async def _set(key_id: str, state: str) -> None:
    connection = await connect()
    try:
        left = 0
        if state == "destroyed":
            counts = await rotation.key_status(connection)
            left = counts.get(key_id, 0)
        await set_data_key_state(connection, key_id, state, envelopes_left=left)
    finally:
        await connection.close()


def set_key_state(key_id: str, state: str) -> None:
    """Enable, disable or destroy a Transit data key (Tink's key states).

    Disable a key before destroying it, and run the app: if nothing fails,
    nothing needed it. The active key cannot be disabled, and a key that
    stored secrets still use cannot be destroyed (run `rotate_keys` first).

    :param key_id:
        The data key (`key_status` lists them).
    :param state:
        enabled, disabled or destroyed.
    """
    run(lambda: _set(key_id, state))
    print(f"data key {key_id} is {state}: {_MEANING[state]}")
