"""(d) SQLAlchemy 2 async (asyncpg driver) with an AES-GCM TypeDecorator.

This is the approach the original plan named. A TypeDecorator is handed the
value alone, so its AAD can bind the table and column but not the row id or
user id: an envelope copied to another row or user of the same column still
decrypts. The benchmark therefore gives it its own users, sealed that way
(see dataset.py); the crypto is otherwise the package's KeyRing.

Per operation: BEGIN, set_config, SELECT (and for a put SELECT .. FOR UPDATE,
UPDATE), COMMIT, with SQLAlchemy's default pool (reset on return is a
rollback, which is free after a commit).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Text, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from benchmarks.implementations import W1_TYPE, Implementation, pool_bounds, utc_now
from benchmarks.sealing import CREDENTIALS_TABLE, open_column_only, seal_column_only
from orchestrator_db.crypto.keyring import KeyRing
from orchestrator_db.settings import CURRENT_USER_SETTING

_ring: KeyRing | None = None


def use_ring(ring: KeyRing) -> None:
    global _ring
    _ring = ring


class EncryptedText(TypeDecorator):
    """AES-256-GCM envelope; AAD = table + column (the row is not known here)."""

    impl = Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return seal_column_only(_ring, value, self.column)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return open_column_only(_ring, value, self.column)


class Base(DeclarativeBase):
    pass


class Credential(Base):
    __tablename__ = CREDENTIALS_TABLE

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_account_id: Mapped[uuid.UUID]
    user_id: Mapped[str]
    credential_type: Mapped[str]
    api_key: Mapped[str] = mapped_column(EncryptedText("api_key"))
    secret_key: Mapped[str] = mapped_column(EncryptedText("secret_key"))
    is_active: Mapped[bool]
    expires_at: Mapped[datetime.datetime | None]
    created_at: Mapped[datetime.datetime]
    updated_at: Mapped[datetime.datetime]


_SET_USER = text(f"SELECT set_config('{CURRENT_USER_SETTING}', :user_id, true)")


def _asyncpg_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def _usable(credential: Credential, now: datetime.datetime) -> bool:
    return credential.is_active and (credential.expires_at is None or credential.expires_at > now)


class SQLAlchemyTypeDecorator(Implementation):
    key, label = "d", "SQLAlchemy 2 + TypeDecorator"

    def __init__(self, url: str, ring: KeyRing, users: list[str]) -> None:
        self.url, self.users = url, users
        use_ring(ring)
        self.engine: AsyncEngine | None = None

    async def start(self) -> None:
        _, high = pool_bounds()
        self.engine = create_async_engine(_asyncpg_url(self.url), pool_size=high, max_overflow=0)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()

    async def get_one(self, user_id: str) -> Any:
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_USER, {"user_id": user_id})
            credential = (
                await session.scalars(
                    select(Credential).where(
                        Credential.user_id == user_id, Credential.credential_type == W1_TYPE
                    )
                )
            ).one_or_none()
        if credential is None or not _usable(credential, utc_now()):
            raise LookupError(W1_TYPE)
        return credential.api_key, credential.secret_key

    async def list_all(self, user_id: str) -> Any:
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_USER, {"user_id": user_id})
            credentials = (
                await session.scalars(
                    select(Credential)
                    .where(Credential.user_id == user_id)
                    .order_by(Credential.credential_type)
                )
            ).all()
        now = utc_now()
        return [(c.api_key, c.secret_key) for c in credentials if _usable(c, now)]

    async def put_one(self, user_id: str, api_key: str, secret_key: str) -> Any:
        async with self.sessions() as session, session.begin():
            await session.execute(_SET_USER, {"user_id": user_id})
            credential = (
                await session.scalars(
                    select(Credential)
                    .where(Credential.user_id == user_id, Credential.credential_type == W1_TYPE)
                    .with_for_update()
                )
            ).one_or_none()
            if credential is None:
                raise LookupError(f"{W1_TYPE} (the baseline only replaces existing rows)")
            credential.api_key = api_key
            credential.secret_key = secret_key
            credential.expires_at = None
            credential.is_active = True
        return credential.id
