"""Data keys wrapped by a KMS (Vault/OpenBao Transit): the key provider's table.

With ORCHESTRATOR_DB_KEY_PROVIDER=transit the key ring's keys are data keys
(DEKs) that Transit generated; only their wrapped form is stored here. A
process unwraps them once at startup. States follow Tink: ``enabled``
(decrypts; the one ``is_primary`` key also encrypts), ``disabled`` (decrypts
nothing, can be re-enabled) and ``destroyed`` (its wrapped key is gone for
good; the row stays as a record). A new key is enabled but not primary: a
prepared key every process learns at its next start, before any writes with
it. Nothing in this table is secret without Transit.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-30T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "KMS-wrapped data keys"

FORWARDS = [
    """CREATE TABLE public.orchestrator_db_data_keys (
        key_id text PRIMARY KEY,
        provider text NOT NULL DEFAULT 'transit',
        wrapped_key text,
        transit_key_name text NOT NULL,
        transit_key_version integer NOT NULL,
        state text NOT NULL DEFAULT 'enabled',
        is_primary boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT orchestrator_db_data_keys_key_id_format
            CHECK (key_id ~ '^[A-Za-z0-9_-]{{1,32}}$'),
        CONSTRAINT orchestrator_db_data_keys_provider_known CHECK (provider IN ('transit')),
        CONSTRAINT orchestrator_db_data_keys_state_known
            CHECK (state IN ('enabled', 'disabled', 'destroyed')),
        CONSTRAINT orchestrator_db_data_keys_destroyed_has_no_key
            CHECK ((state = 'destroyed') = (wrapped_key IS NULL)),
        CONSTRAINT orchestrator_db_data_keys_wrapped_key_not_empty CHECK (wrapped_key <> ''),
        CONSTRAINT orchestrator_db_data_keys_primary_is_enabled
            CHECK (NOT is_primary OR state = 'enabled'),
        CONSTRAINT orchestrator_db_data_keys_version_positive CHECK (transit_key_version > 0)
    )""",
    """CREATE UNIQUE INDEX idx_orchestrator_db_data_keys_one_primary
        ON public.orchestrator_db_data_keys (is_primary) WHERE is_primary""",
    "REVOKE ALL ON public.orchestrator_db_data_keys FROM PUBLIC",
    "COMMENT ON TABLE public.orchestrator_db_data_keys IS 'Data keys of the key ring, "
    "wrapped by Vault/OpenBao Transit (ORCHESTRATOR_DB_KEY_PROVIDER=transit). "
    "Useless without Transit.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.key_id IS 'The key id envelopes "
    "name (v1.<key_id>.…).'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.provider IS 'Which KMS wrapped it.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.wrapped_key IS 'The DEK as Transit "
    "wrapped it (vault:vN:…); NULL once destroyed.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.transit_key_name IS 'The Transit key "
    "that wraps it.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.transit_key_version IS 'The Transit "
    "key version that wrapped it; rewrap_keys moves it to the latest.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.state IS 'enabled, disabled (decrypts "
    "nothing, can be re-enabled) or destroyed.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.is_primary IS 'The one key new "
    "secrets are encrypted with.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.created_at IS 'When it was generated.'",
    "COMMENT ON COLUMN public.orchestrator_db_data_keys.updated_at IS 'When its state, primary "
    "flag or wrapping last changed.'",
]

BACKWARDS = ["DROP TABLE IF EXISTS public.orchestrator_db_data_keys"]


class RawTable(Table):
    pass


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="orchestrator_db", description=DESCRIPTION
    )

    async def run():
        for statement in FORWARDS:
            await RawTable.raw(statement)

    async def run_backwards():
        for statement in BACKWARDS:
            await RawTable.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
