"""The one place environment variables are read.

Settings are read lazily and fail fast: a missing DATABASE_URL or key ring is
an error that names the variable and the fix, never a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from orchestrator_db.errors import ConfigurationError

#: The transaction-local setting the row-level-security policies read.
CURRENT_USER_SETTING = "app.current_user_id"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    #: 0 disables asyncpg's prepared-statement cache: needed behind PgBouncer
    #: in transaction mode before 1.21 (Debian 12 ships 1.18).
    statement_cache_size: int
    pool_min_size: int
    pool_max_size: int
    #: Seconds a scope waits for a free pooled connection before PoolTimeout.
    pool_acquire_timeout: float


@lru_cache(maxsize=1)
def database_settings() -> DatabaseSettings:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set. Set it to postgresql://user:pass@host:port/db, "
            "or use `make run` / `make test`, which start a local PostgreSQL for you."
        )
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("DATABASE_URL must start with postgresql://")
    return DatabaseSettings(
        url=url,
        statement_cache_size=_int("ORCHESTRATOR_DB_STATEMENT_CACHE_SIZE", 100),
        pool_min_size=_int("ORCHESTRATOR_DB_POOL_MIN_SIZE", 1),
        pool_max_size=_int("ORCHESTRATOR_DB_POOL_MAX_SIZE", 10),
        pool_acquire_timeout=_float("ORCHESTRATOR_DB_POOL_TIMEOUT", 10.0),
    )


@dataclass(frozen=True)
class KeySettings:
    keys: str | None
    keys_file: str | None


def key_settings() -> KeySettings:
    return KeySettings(
        keys=os.environ.get("ORCHESTRATOR_DB_KEYS") or None,
        keys_file=os.environ.get("ORCHESTRATOR_DB_KEYS_FILE") or None,
    )


def is_production() -> bool:
    """Production refuses development conveniences (generated keys, plain cookies)."""
    env = os.environ.get("ORCHESTRATOR_DB_ENV", "development").strip().lower()
    if env not in {"development", "production"}:
        raise ConfigurationError(
            f"ORCHESTRATOR_DB_ENV must be development or production, got {env!r}"
        )
    return env == "production"


def role_password(variable: str) -> str | None:
    """Passwords for `create_roles`; None means the command must be given a flag."""
    return os.environ.get(variable) or None


@dataclass(frozen=True)
class AdminSettings:
    password: str | None
    mfa_required: bool
    allowed_hosts: tuple[str, ...]
    production: bool


def admin_settings() -> AdminSettings:
    hosts = os.environ.get("ORCHESTRATOR_DB_ALLOWED_HOSTS", "")
    return AdminSettings(
        password=os.environ.get("ADMIN_PASSWORD") or None,
        mfa_required=_flag("ORCHESTRATOR_DB_ADMIN_MFA_REQUIRED"),
        allowed_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()),
        production=is_production(),
    )


def configured_database_url() -> str | None:
    """DATABASE_URL if set; the run and test commands start a local server otherwise."""
    return os.environ.get("DATABASE_URL", "").strip() or None


def seed_users_database_url() -> str | None:
    """Where `seed_demo` inserts its Better Auth users; default DATABASE_URL.

    Better Auth owns "user" and the application role may only read it, so
    the demo users are inserted by a role that may (the table owner).
    """
    return os.environ.get("ORCHESTRATOR_DB_SEED_USERS_URL", "").strip() or None


def admin_bind() -> tuple[str, int]:
    """Where `make run` serves the admin: ORCHESTRATOR_DB_ADMIN_HOST / _PORT.

    The default, 127.0.0.1:8000, is reachable from this machine only; a
    container sets the host to 0.0.0.0 and publishes the port itself.
    """
    host = os.environ.get("ORCHESTRATOR_DB_ADMIN_HOST", "").strip() or "127.0.0.1"
    return host, _int("ORCHESTRATOR_DB_ADMIN_PORT", 8000)
