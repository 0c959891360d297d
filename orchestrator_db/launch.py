"""`make run`: find or start PostgreSQL, migrate, then serve the admin.

With DATABASE_URL set, that server is used (and must answer), as the table
owner. Without it an embedded cluster is started in .local/postgres and a
database named ``orchestrator`` is created in it on first run. The generated
files live in ORCHESTRATOR_DB_LOCAL_DIR (default <checkout>/.local).

First, before anything touches a database, every setting is checked: the
DATABASE_URL names a database that is not the server's maintenance one, the
role passwords are there, the key ring parses, and the admin port is free.

Then, every run:

1. ``piccolo migrations forwards all`` as the owner;
2. ``create_roles``: the application role and the operator role (BYPASSRLS)
   are created or refreshed with their grants. Their passwords come from
   ORCHESTRATOR_DB_APP_PASSWORD and ORCHESTRATOR_DB_OPERATOR_PASSWORD when
   DATABASE_URL is set; for the embedded cluster they are generated once
   into .local/roles.env (mode 0600, git-ignored);
3. a development key ring is generated into .local/dev-keys.txt (mode 0600,
   git-ignored) if no ORCHESTRATOR_DB_KEYS / ORCHESTRATOR_DB_KEYS_FILE is
   set; never in production (ORCHESTRATOR_DB_ENV=production), which stops
   instead;
4. demo data, with ``--seed-demo`` (``make run ARGS=--seed-demo``), or by
   itself on the embedded cluster's first run (no users yet);
5. the operator account ``piccolo_user`` on first run, password from
   ADMIN_PASSWORD or generated and printed once;
6. .local/app.env: the application role's DATABASE_URL and the key ring,
   for an app (or the README's example) to load;
7. the admin, served at http://127.0.0.1:8000/admin/, connected to
   PostgreSQL as the operator role.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg

from orchestrator_db.crypto.keyring import generate_key_entry
from orchestrator_db.devdb import (
    DatabaseUnavailable,
    EmbeddedPostgres,
    mask_password,
    resolve_server_url,
    with_credentials,
    with_database,
)
from orchestrator_db.devdb.cluster import port_is_free
from orchestrator_db.devdb.urls import database_of
from orchestrator_db.errors import ConfigurationError, OrchestratorDBError
from orchestrator_db.settings import (
    admin_bind,
    admin_settings,
    configured_database_url,
    configured_role_passwords,
    get_settings,
    is_production,
    key_settings,
    use_settings,
)

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DATABASE = "orchestrator"
#: A server's own databases: migrating into one is always a mistake.
MAINTENANCE_DATABASES = ("postgres", "template0", "template1")
APP_ROLE = "orchestrator_app"
OPERATOR_ROLE = "orchestrator_operator"
PASSWORD_VARIABLES = ("ORCHESTRATOR_DB_APP_PASSWORD", "ORCHESTRATOR_DB_OPERATOR_PASSWORD")
PICCOLO = str(Path(sys.executable).with_name("piccolo"))


def local_dir() -> Path:
    """Where `make run` keeps what it generates: ORCHESTRATOR_DB_LOCAL_DIR, default <checkout>/.local."""
    configured = get_settings().local_dir
    return Path(configured).resolve() if configured is not None else ROOT / ".local"


def roles_file() -> Path:
    return local_dir() / "roles.env"


def dev_keys_file() -> Path:
    return local_dir() / "dev-keys.txt"


def app_env_file() -> Path:
    return local_dir() / "app.env"


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it (as a newcomer types it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


async def _ensure_local_database(server_url: str) -> str:
    connection = await asyncpg.connect(server_url)
    try:
        if not await connection.fetchval(
            "SELECT true FROM pg_database WHERE datname = $1", LOCAL_DATABASE
        ):
            await connection.execute(f"CREATE DATABASE {LOCAL_DATABASE}")
    finally:
        await connection.close()
    return with_database(server_url, LOCAL_DATABASE)


def resolve_owner_url() -> str:
    """The URL migrations run with: DATABASE_URL, or the embedded cluster's database."""
    configured = configured_database_url()
    if configured:
        return resolve_server_url(configured)
    cluster = EmbeddedPostgres()
    server_url = resolve_server_url(None, embedded=cluster)
    print(
        f"embedded PostgreSQL: data in {cluster.data_dir} (log {cluster.log_file}); "
        "stop it with `.venv/bin/python -m orchestrator_db.devdb stop`",
        flush=True,
    )
    return asyncio.run(_ensure_local_database(server_url))


def check_database_url() -> None:
    """A configured DATABASE_URL must name the application's database, not the server's own."""
    configured = configured_database_url()
    if configured is None:
        return
    database = database_of(configured)
    if not database or database in MAINTENANCE_DATABASES:
        named = f"the server's {database!r} database" if database else "no database"
        raise ConfigurationError(
            f"DATABASE_URL names {named}: `make run` migrates the database it names, so point "
            f"it at the application's own (e.g. postgresql://owner:…@host:5432/{LOCAL_DATABASE}) "
            "or unset it to use the embedded cluster"
        )


def check_key_ring() -> None:
    """The configured key ring must parse (a Transit ring is unwrapped when the pool opens)."""
    from orchestrator_db.crypto.providers import load_key_ring, uses_transit

    if not uses_transit():
        load_key_ring()


def check_admin_port() -> None:
    host, port = admin_bind()
    if not port_is_free(host, port):
        raise ConfigurationError(
            f"port {port} on {host} is in use (another `make run`?): stop that process, or "
            "set ORCHESTRATOR_DB_ADMIN_PORT to a free port"
        )


def _piccolo(database_url: str, *args: str, **env: str) -> None:
    environment = {**os.environ, **_settings_for_children(), "DATABASE_URL": database_url, **env}
    subprocess.run([PICCOLO, *args], cwd=ROOT, env=environment, check=True)


def _settings_for_children() -> dict[str, str]:
    """What a child `piccolo` command must know that this process decided (the dev key file)."""
    keys_file = key_settings().keys_file
    return {"ORCHESTRATOR_DB_KEYS_FILE": keys_file} if keys_file else {}


def migrate(owner_url: str) -> None:
    _piccolo(owner_url, "migrations", "forwards", "all")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def role_passwords(embedded: bool) -> dict[str, str]:
    """The two role passwords: from the environment, else (embedded only) .local/roles.env."""
    from_env = configured_role_passwords()
    if all(from_env.values()):
        return from_env  # type: ignore[return-value]
    if not embedded:
        raise ConfigurationError(
            "with DATABASE_URL set, also set ORCHESTRATOR_DB_APP_PASSWORD and "
            "ORCHESTRATOR_DB_OPERATOR_PASSWORD: the passwords `make run` gives the "
            "application and operator roles it creates"
        )
    stored_file = roles_file()
    if not stored_file.exists():
        _write_private(
            stored_file,
            "# Role passwords for the embedded cluster, generated by `make run`.\n"
            + "".join(f"{name}={secrets.token_urlsafe(24)}\n" for name in PASSWORD_VARIABLES),
        )
    stored = dict(
        line.split("=", 1)
        for line in stored_file.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {name: from_env[name] or stored[name] for name in PASSWORD_VARIABLES}


def ensure_dev_keys() -> None:
    """Use the configured key ring; outside production, make a development one if none is."""
    settings = key_settings()
    if settings.keys or settings.keys_file or settings.provider == "transit":
        return
    if is_production():
        raise ConfigurationError(
            "production needs ORCHESTRATOR_DB_KEYS or ORCHESTRATOR_DB_KEYS_FILE; "
            "run `piccolo orchestrator_db generate_key` to make a key"
        )
    keys_file = dev_keys_file()
    if not keys_file.exists():
        _write_private(
            keys_file,
            "# DEVELOPMENT key ring generated by `make run`. Never use it in production.\n"
            f"{generate_key_entry()}\n",
        )
        banner = "=" * 72
        print(
            f"\n{banner}\n"
            f"  NO ENCRYPTION KEY WAS CONFIGURED: generated a DEVELOPMENT key ring in\n"
            f"  {keys_file} (mode 0600, git-ignored).\n"
            "  Credentials stored now are readable only with this file: keep it, and\n"
            "  never use it in production (set ORCHESTRATOR_DB_KEYS there).\n"
            f"{banner}\n",
            flush=True,
        )
    else:
        print(f"using the development key ring in {_shown(keys_file)} (not for production)")
    use_settings(keys_file=keys_file)


def write_app_env(app_url: str) -> Path:
    """.local/app.env: what an app needs to run as the application role (mode 0600, rewritten each run)."""
    settings = key_settings()
    lines = [
        "# The application role's settings for the database `make run` prepared; rewritten",
        "# by every `make run` (mode 0600, git-ignored). Load: set -a; . .local/app.env; set +a",
        f"DATABASE_URL={app_url}",
    ]
    if settings.provider == "file" and settings.keys_file:
        lines.append(f"ORCHESTRATOR_DB_KEYS_FILE={Path(settings.keys_file).resolve()}")
    elif settings.provider == "env" and settings.keys:
        lines.append(f"ORCHESTRATOR_DB_KEYS={settings.keys}")
    else:
        lines.append("# the key ring: set ORCHESTRATOR_DB_KEY_PROVIDER and its settings as for `make run`")
    path = app_env_file()
    staging = path.with_name(path.name + ".tmp")
    staging.unlink(missing_ok=True)
    _write_private(staging, "\n".join(lines) + "\n")
    os.replace(staging, path)
    return path


async def _user_count(owner_url: str) -> int:
    connection = await asyncpg.connect(owner_url)
    try:
        return await connection.fetchval('SELECT count(*) FROM "user"')
    finally:
        await connection.close()


async def _summary(owner_url: str) -> None:
    connection = await asyncpg.connect(owner_url)
    try:
        print(f"\ndatabase: {mask_password(owner_url)}")
        for table in ('"user"', "user_accounts", "user_credentials", "admin_audit_log"):
            count = await connection.fetchval(f"SELECT count(*) FROM {table}")
            print(f"  {table:<18} {count} rows")
    finally:
        await connection.close()


def serve_admin(operator_url: str) -> None:
    """Serve the admin in this process, connected as the operator role."""
    use_settings(database_url=operator_url)
    from orchestrator_db.admin.asgi import serve
    from orchestrator_db.admin.auth import ensure_operator_account

    username, generated = asyncio.run(ensure_operator_account(admin_settings().password))
    if generated:
        print(
            f"\ncreated the operator account {username!r} with password: {generated}\n"
            "(shown once; set ADMIN_PASSWORD and run again to reset it)",
            flush=True,
        )
    host, port = admin_bind()
    check_admin_port()  # again: something may have taken it while we migrated
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    print(f"\nadmin: http://{shown}:{port}/admin/  (log in as {username!r})\n", flush=True)
    serve(host=host, port=port)


def check_settings(serve: bool) -> dict[str, str]:
    """Everything that can be wrong with the settings, checked before any database is touched.

    Returns the role passwords; on the embedded cluster it may generate them,
    and a development key ring, into the local directory.
    """
    get_settings()  # a malformed variable is a ConfigurationError naming it
    embedded = configured_database_url() is None
    check_database_url()
    if serve:
        check_admin_port()
    passwords = role_passwords(embedded)
    ensure_dev_keys()
    check_key_ring()
    return passwords


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n")[0])
    parser.add_argument("--seed-demo", action="store_true", help="create demo users, accounts and credentials")
    parser.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    args = parser.parse_args(argv)
    embedded = configured_database_url() is None
    try:
        passwords = check_settings(serve=not args.no_serve)
        owner_url = resolve_owner_url()
        migrate(owner_url)
        _piccolo(
            owner_url,
            "orchestrator_db",
            "create_roles",
            f"--app_role={APP_ROLE}",
            f"--operator_role={OPERATOR_ROLE}",
            **passwords,
        )
        app_url = with_credentials(owner_url, APP_ROLE, passwords["ORCHESTRATOR_DB_APP_PASSWORD"])
        operator_url = with_credentials(
            owner_url, OPERATOR_ROLE, passwords["ORCHESTRATOR_DB_OPERATOR_PASSWORD"]
        )
        first_run = embedded and not is_production() and asyncio.run(_user_count(owner_url)) == 0
        if args.seed_demo or first_run:
            _piccolo(
                app_url,
                "orchestrator_db",
                "seed_demo",
                ORCHESTRATOR_DB_SEED_USERS_URL=owner_url,
            )
        asyncio.run(_summary(owner_url))
        app_env = _shown(write_app_env(app_url))
        print(
            f"\napp settings (application role, key ring): {app_env}; "
            f"load them with `set -a; . {app_env}; set +a`",
            flush=True,
        )
        if args.no_serve:
            return 0
        serve_admin(operator_url)
    except (DatabaseUnavailable, OrchestratorDBError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(error.cmd[1:3])} failed (exit {error.returncode})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
