"""What the key commands print: values per key id and per format version, and progress."""

from __future__ import annotations

from orchestrator_db.crypto.keyring import CURRENT_VERSION, FORMAT_VERSIONS, KeyRing
from orchestrator_db.rotation import PLAINTEXT, BatchProgress, ReencryptResult


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


def print_format_counts(counts: dict[str, int]) -> None:
    """Envelopes per format version; v1 means `rotate_keys` has work to do."""
    print("stored envelopes per format version:")
    for version in FORMAT_VERSIONS:
        note = "current" if version == CURRENT_VERSION else "older: `rotate_keys` re-seals it"
        print(f"  {version}  {counts.get(version, 0):>10}  {note}")
    print(flush=True)


def print_progress(progress: BatchProgress) -> None:
    print(
        f"batch {progress.batch}: {progress.rows} rows rewritten, "
        f"{progress.total_rows} rows ({progress.total_values} values) so far",
        flush=True,
    )


def exit_if_unfinished(result: ReencryptResult, command: str) -> None:
    """Rows writers held for the whole run are left: say so, and exit non-zero."""
    if result.remaining:
        print(
            f"{result.remaining} rows were held by writers throughout and are not "
            f"done yet: run {command} again"
        )
        raise SystemExit(1)
