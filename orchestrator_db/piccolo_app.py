"""The orchestrator_db Piccolo app: its tables, migrations and commands."""

import os

from piccolo.conf.apps import AppConfig, Command

from orchestrator_db.commands._cli import list_our_commands
from orchestrator_db.commands.activate_key import activate_key
from orchestrator_db.commands.check import check
from orchestrator_db.commands.create_roles import create_roles
from orchestrator_db.commands.encrypt_plaintext import encrypt_plaintext
from orchestrator_db.commands.generate_key import generate_key
from orchestrator_db.commands.key_status import key_status
from orchestrator_db.commands.rewrap_keys import rewrap_keys
from orchestrator_db.commands.rotate_keys import rotate_keys
from orchestrator_db.commands.seed_demo import seed_demo
from orchestrator_db.commands.set_key_state import set_key_state
from orchestrator_db.tables import UserAccounts, UserCredentials

CURRENT_DIRECTORY = os.path.dirname(os.path.abspath(__file__))

COMMANDS = (
    check,
    create_roles,
    generate_key,
    key_status,
    rotate_keys,
    encrypt_plaintext,
    activate_key,
    set_key_state,
    rewrap_keys,
    seed_demo,
)

APP_CONFIG = AppConfig(
    app_name="orchestrator_db",
    migrations_folder_path=os.path.join(CURRENT_DIRECTORY, "piccolo_migrations"),
    table_classes=[UserAccounts, UserCredentials],
    migration_dependencies=[],
    commands=[Command(command) for command in COMMANDS],
)

# `piccolo orchestrator_db --help` (or an unknown command) lists these, not Piccolo's catalogue.
list_our_commands(APP_CONFIG.app_name, COMMANDS)
