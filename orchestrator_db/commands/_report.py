"""What the key commands print: values per key id, and progress."""

from __future__ import annotations

from orchestrator_db.crypto import KeyRing
from orchestrator_db.errors import ConfigurationError
from orchestrator_db.rotation import PLAINTEXT, BatchProgress


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"--batch_size must be a positive integer, got {batch_size!r}")


def _note(key_id: str, count: int, key_ring: KeyRing) -> str:
    if key_id == PLAINTEXT:
        return "NOT ENCRYPTED: run `piccolo orchestrator_db encrypt_plaintext`"
    if key_id not in key_ring.key_ids:
        return "MISSING FROM THE KEY RING: these values cannot be decrypted"
    if key_id == key_ring.active_key_id:
        return "active: encrypts new values"
    if count:
        return "in the ring, still in use"
    return "in the ring, unused: can be retired"


def print_key_counts(title: str, counts: dict[str, int], key_ring: KeyRing) -> None:
    """One line per ring key (active first), then unknown key ids, then plaintext."""
    key_ids = list(key_ring.key_ids)
    key_ids += [k for k in counts if k not in key_ring.key_ids and k != PLAINTEXT]
    if counts.get(PLAINTEXT):
        key_ids.append(PLAINTEXT)
    width = max(len(key_id) for key_id in key_ids)
    print(f"{title} (stored values per key id, both secret columns):")
    for key_id in key_ids:
        count = counts.get(key_id, 0)
        print(f"  {key_id:<{width}}  {count:>10}  {_note(key_id, count, key_ring)}")
    print(flush=True)


def print_progress(progress: BatchProgress) -> None:
    print(
        f"batch {progress.batch}: {progress.rows} rows rewritten, "
        f"{progress.total_rows} rows ({progress.total_values} values) so far",
        flush=True,
    )
