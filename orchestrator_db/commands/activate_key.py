from orchestrator_db.commands._connect import connect, run
from orchestrator_db.crypto.data_keys import activate_data_key


async def _activate(key_id: str) -> None:
    connection = await connect()
    try:
        await activate_data_key(connection, key_id)
    finally:
        await connection.close()


def activate_key(key_id: str) -> None:
    """Make a prepared (enabled) Transit data key the one that encrypts new secrets.

    Do it once every process has restarted since the key was generated, so
    each already knows it. Processes pick the new active key up at their
    next start; then `rotate_keys` moves stored secrets to it.

    :param key_id:
        The data key to activate (`key_status` lists them).
    """
    run(lambda: _activate(key_id))
    print(f"data key {key_id} is active: processes encrypt with it from their next start")
