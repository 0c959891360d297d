"""Piccolo's entry point: the database engine, built from DATABASE_URL, and the apps."""

from piccolo.conf.apps import AppRegistry

from orchestrator_db.engine import get_engine

DB = get_engine()

APP_REGISTRY = AppRegistry(
    apps=[
        "orchestrator_db.piccolo_app",
        # The admin panel's operators, sessions and MFA secrets.
        "piccolo.apps.user.piccolo_app",
        "piccolo_api.session_auth.piccolo_app",
        "piccolo_api.mfa.authenticator.piccolo_app",
    ]
)
