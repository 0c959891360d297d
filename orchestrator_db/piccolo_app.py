"""The orchestrator_db Piccolo app: its tables, migrations and commands."""

import os

from piccolo.conf.apps import AppConfig, Command

from orchestrator_db.commands.check import check
from orchestrator_db.commands.create_roles import create_roles
from orchestrator_db.commands.generate_key import generate_key
from orchestrator_db.tables import UserAccounts, UserCredentials

CURRENT_DIRECTORY = os.path.dirname(os.path.abspath(__file__))

APP_CONFIG = AppConfig(
    app_name="orchestrator_db",
    migrations_folder_path=os.path.join(CURRENT_DIRECTORY, "piccolo_migrations"),
    table_classes=[UserAccounts, UserCredentials],
    migration_dependencies=[],
    commands=[
        Command(check),
        Command(create_roles),
        Command(generate_key),
    ],
)
