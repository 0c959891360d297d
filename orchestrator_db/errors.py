"""Every error a caller of orchestrator_db can meet, in one place.

Messages name what went wrong and what to do; they never carry plaintext
secrets, ciphertext or key material.
"""

from __future__ import annotations


class OrchestratorDBError(Exception):
    """Base class, so an app can catch everything this package raises."""


class ConfigurationError(OrchestratorDBError):
    """A setting is missing or malformed."""


class KeyConfigError(ConfigurationError):
    """The encryption key ring is missing or malformed."""


class DecryptionError(OrchestratorDBError):
    """A stored secret could not be decrypted: tampered, truncated, moved,
    or under a key that is not in the ring."""


class ScopeError(OrchestratorDBError):
    """A tenant scope was misused, or the database would not enforce it."""


class NotFound(OrchestratorDBError, LookupError):
    """Base for lookups that found nothing visible in the current scope."""


class AccountNotFound(NotFound):
    """The scoped user has no trading account."""


class AccountExists(OrchestratorDBError):
    """The scoped user already has a trading account (one per user)."""


class CredentialNotFound(NotFound):
    """No usable credential; ``reason`` is 'missing', 'inactive' or 'expired'."""

    def __init__(self, credential_type: str, reason: str) -> None:
        self.credential_type = credential_type
        self.reason = reason
        super().__init__(f"credential {credential_type!r} is {reason}")


class PoolTimeout(OrchestratorDBError, TimeoutError):
    """No database connection became free within the configured wait."""


class UserNotFound(NotFound):
    """No Better Auth user with that id exists."""


class NotAuthenticated(OrchestratorDBError):
    """No signed-in Better Auth user; ``reason`` is 'missing', 'malformed',
    'bad_signature', 'unknown_session' or 'expired'. Never holds the token."""

    REASONS = ("missing", "malformed", "bad_signature", "unknown_session", "expired")

    def __init__(self, reason: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.reason = reason
        super().__init__(f"not authenticated: {reason}")


class ConnectionLost(OrchestratorDBError, ConnectionError):
    """The database connection failed mid-scope; the scope can be retried."""


class DatabaseError(OrchestratorDBError):
    """The database refused a statement for a reason the API did not foresee.

    ``sqlstate`` and ``constraint`` name what failed; the message never
    carries a value (the driver's own message can quote one, so it is dropped).
    """

    def __init__(
        self, message: str, *, sqlstate: str | None = None, constraint: str | None = None
    ) -> None:
        self.sqlstate = sqlstate
        self.constraint = constraint
        super().__init__(message)


class ConstraintViolation(DatabaseError):
    """A write broke a constraint of the schema (unique, foreign key, check, not null)."""


class TransactionConflict(DatabaseError):
    """A serialization failure or deadlock: nothing was committed; retry the scope."""
