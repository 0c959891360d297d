from orchestrator_db.commands._connect import connect, run
from orchestrator_db.crypto.data_keys import rewrap_data_keys
from orchestrator_db.crypto.providers import transit_client


async def _rewrap() -> int:
    transit = transit_client()
    connection = await connect()
    try:
        return await rewrap_data_keys(connection, transit)
    finally:
        await connection.close()


def rewrap_keys() -> None:
    """Rewrap every stored data key under the Transit key's latest version.

    Run it after rotating the Transit key (`bao write -f transit/keys/<name>/rotate`).
    No credential row changes: only the wrapped data keys do. Uses the
    ORCHESTRATOR_DB_TRANSIT_* settings and DATABASE_URL (the operator role).
    """
    count = run(_rewrap)
    print(f"rewrapped {count} data key(s) under the latest Transit key version")
