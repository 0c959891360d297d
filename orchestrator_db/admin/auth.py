"""Who gets into the admin panel, and for how long.

- :class:`Operator`: only active admins can log in at all, so an inactive or
  non-admin user never gets a session row (piccolo_api's login creates one
  for whoever the user table's ``login`` returns).
- :class:`OperatorSession`: a sliding idle timeout on top of piccolo_api's
  sessions, which only know "extend when close to expiry".
- :class:`KeyRingMFAEncryption`: TOTP secrets sealed by our key ring in its
  one envelope format, under their own HKDF purpose (crypto/mfa.py).
- :class:`MFARequired`: when MFA is mandatory, an operator who has not
  enrolled can reach nothing but the MFA setup page.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Optional

from piccolo.apps.user.tables import BaseUser
from piccolo_api.encryption.providers import EncryptionProvider
from piccolo_api.mfa.authenticator.tables import AuthenticatorSecret
from piccolo_api.session_auth.tables import SessionsBase
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator_db.admin.audit import route_path
from orchestrator_db.crypto import mfa
from orchestrator_db.crypto.keyring import KeyRing

#: Sessions end after this long without a request ...
SESSION_IDLE = datetime.timedelta(minutes=30)
#: ... and this long after login, whatever happens.
SESSION_MAX = datetime.timedelta(hours=8)
#: The idle deadline is written back at most this often, not on every request.
_SLIDE_GRANULARITY = datetime.timedelta(minutes=1)

MFA_PURPOSE = mfa.PURPOSE


class Operator(BaseUser, tablename="piccolo_user"):
    """An admin-panel operator: Piccolo's user table, with a stricter login."""

    @classmethod
    async def login(cls, username: str, password: str) -> Optional[int]:
        """The user id only for an active admin with the right password."""
        user_id = await super().login(username, password)
        if user_id is None:
            return None
        allowed = await cls.exists().where(
            (cls.id == user_id) & cls.active.eq(True) & cls.admin.eq(True)
        )
        return user_id if allowed else None


class OperatorSession(SessionsBase, tablename="sessions"):
    """Sessions that end after SESSION_IDLE without a request, SESSION_MAX at most."""

    @classmethod
    async def get_user_id(
        cls, token: str, increase_expiry: Optional[datetime.timedelta] = None
    ) -> Optional[int]:
        """The session's user id while it is live; each use pushes the idle deadline.

        ``increase_expiry`` is the idle window (piccolo_admin passes it);
        the deadline becomes "now + window", never past the hard maximum.
        """
        session = await cls.objects().where(cls.token == token).first()
        if session is None:
            return None
        now = datetime.datetime.now()  # naive local time, as SessionsBase stores it
        expiry = session.expiry_date
        max_expiry = session.max_expiry_date
        if expiry <= now or max_expiry <= now:
            return None
        window = increase_expiry or SESSION_IDLE
        slid = min(now + window, max_expiry)
        if slid - expiry >= _SLIDE_GRANULARITY:
            await cls.update({cls.expiry_date: slid}).where(cls.id == session.id)
        return session.user_id


class KeyRingMFAEncryption(EncryptionProvider):
    """piccolo_api's EncryptionProvider, backed by our key ring (see crypto/mfa.py).

    Values are ``odbmfa-`` and a v2 envelope of the ring's ``mfa`` purpose:
    the one envelope format and decoder, so TOTP secrets stay readable after
    the ring rotates, and ``rotate_keys`` re-seals them.
    """

    def __init__(self, key_ring: KeyRing) -> None:
        super().__init__(prefix=mfa.PREFIX)
        self._ring = key_ring

    def encrypt(self, value: str, add_prefix: bool = True) -> str:
        sealed = mfa.seal(self._ring, value)
        return self.add_prefix(sealed) if add_prefix else sealed

    def decrypt(self, encrypted_value: str, has_prefix: bool = True) -> str:
        if has_prefix:
            encrypted_value = mfa.strip_prefix(encrypted_value)
        return mfa.unseal(self._ring, encrypted_value)


# Paths of the admin's private API an operator may use before enrolling.
_ENROLLMENT_PATHS = ("/mfa-setup/", "/user/")


class MFARequired:
    """Refuses the admin's API to an operator without MFA, except MFA setup.

    Mounted inside piccolo_admin's authentication. With MFA mandatory, a
    password alone buys a session that can do exactly one thing: enroll.
    """

    def __init__(self, app: ASGIApp, secret_table: type[AuthenticatorSecret]) -> None:
        self.app = app
        self.secret_table = secret_table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not route_path(scope).startswith(_ENROLLMENT_PATHS):
            user = getattr(scope.get("user"), "user", None)
            table = self.secret_table
            enrolled = user is not None and await table.exists().where(
                (table.user_id == user.id) & table.revoked_at.is_null()
            )
            if not enrolled:
                await JSONResponse(
                    {"detail": "MFA is required: set it up at /admin/api/mfa-setup/ first."},
                    status_code=403,
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)



#: The operator account `make run` creates on first run.
FIRST_OPERATOR = "piccolo_user"


async def ensure_operator_account(password: str | None) -> tuple[str, str | None]:
    """Create FIRST_OPERATOR (active admin and superuser) if it does not exist.

    Its password is ``password`` (ADMIN_PASSWORD) or, if that is unset, a
    generated one, returned so the caller can show it once. An existing
    account keeps its flags; a given ``password`` resets its password.
    Returns (username, generated password or None).
    """
    from orchestrator_db.engine import get_engine

    Operator._meta.db = get_engine()
    exists = await Operator.exists().where(Operator.username == FIRST_OPERATOR)
    if exists:
        if password:
            await Operator.update_password(FIRST_OPERATOR, password)
        return FIRST_OPERATOR, None
    generated = None if password else secrets.token_urlsafe(15)
    await Operator.create_user(
        username=FIRST_OPERATOR,
        password=password or generated or "",
        email=f"{FIRST_OPERATOR}@localhost",
        active=True,
        admin=True,
        superuser=True,
    )
    return FIRST_OPERATOR, generated
