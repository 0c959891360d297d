"""orchestrator_db: users' trading accounts and encrypted API credentials.

What an app imports::

    from orchestrator_db import connected, user_scope

    async with connected():
        async with user_scope(user_id) as scope:
            credential = await scope.get_credential("alpaca")

    # or one operation as its own transaction: a read in one round trip,
    # a put in two
    credential = await get_credential(user_id, "alpaca")
    await put_credential(user_id, "alpaca", api_key, secret_key)
"""

from orchestrator_db.credentials import UserScope
from orchestrator_db.engine import close_pool, connected, open_pool
from orchestrator_db.errors import (
    AccountExists,
    AccountNotFound,
    ConfigurationError,
    ConnectionLost,
    ConstraintViolation,
    CredentialNotFound,
    DatabaseError,
    DecryptionError,
    KeyConfigError,
    NotAuthenticated,
    OrchestratorDBError,
    PoolTimeout,
    ScopeError,
    TransactionConflict,
    UserNotFound,
)
from orchestrator_db.models import UserAccount, UserCredential
from orchestrator_db.scope import current_scope, user_scope
from orchestrator_db.sessions import authenticate
from orchestrator_db.standalone import get_credential, list_credentials, put_credential
from orchestrator_db.web import current_user_scope

__all__ = [
    "AccountExists",
    "AccountNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "ConstraintViolation",
    "CredentialNotFound",
    "DatabaseError",
    "DecryptionError",
    "KeyConfigError",
    "NotAuthenticated",
    "OrchestratorDBError",
    "PoolTimeout",
    "ScopeError",
    "TransactionConflict",
    "UserAccount",
    "UserCredential",
    "UserNotFound",
    "UserScope",
    "authenticate",
    "close_pool",
    "connected",
    "current_scope",
    "current_user_scope",
    "get_credential",
    "list_credentials",
    "open_pool",
    "put_credential",
    "user_scope",
]
