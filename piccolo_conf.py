"""Piccolo's entry point: the database engine, built from DATABASE_URL at first use, and the apps.

``DB`` is looked up lazily (PEP 562 module ``__getattr__``): Piccolo reads
it with ``getattr(piccolo_conf, "DB")`` only when a command needs the
database, so ``generate_key`` and every ``--help`` run without DATABASE_URL.
"""

from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine

APP_REGISTRY = AppRegistry(
    apps=[
        "orchestrator_db.piccolo_app",
        # The admin panel's operators, sessions and MFA secrets.
        "piccolo.apps.user.piccolo_app",
        "piccolo_api.session_auth.piccolo_app",
        "piccolo_api.mfa.authenticator.piccolo_app",
    ]
)


def __getattr__(name: str) -> Engine:
    if name == "DB":
        from orchestrator_db.engine import get_engine

        return get_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
