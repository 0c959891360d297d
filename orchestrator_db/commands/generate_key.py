from orchestrator_db.crypto.keyring import generate_key_entry


def generate_key(key_id: str = "") -> None:
    """Print a new key-ring entry ("<id>:<base64 32 bytes>").

    Put it first in ORCHESTRATOR_DB_KEYS (comma-separated) to make it the
    key that encrypts; keep older entries after it until `key_status` shows
    they are unused.

    :param key_id:
        An id for the key (letters, digits, - and _); default: k<UTC timestamp>.
    """
    print(generate_key_entry(key_id or None))
