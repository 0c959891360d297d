"""The private PostgreSQL cluster that `make run` and the tests start when no DATABASE_URL is set."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import asyncpg

from orchestrator_db.devdb.binaries import (
    SERVER_USER,
    candidate_bin_dirs,
    initdb_locale,
    is_root,
    pg_bindir_ok,
    scrubbed_env,
    server_user_can_reach,
)
from orchestrator_db.devdb.errors import FIXES, DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
CONNECT_TIMEOUT = 5.0
SUPERUSER = "postgres"  # database superuser created by initdb
HOST = "127.0.0.1"
MAX_CONNECTIONS = 200
_PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for start/stop
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.NNNNN"


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code: ``asyncio.run`` when no loop is running
    here, else on a worker thread with its own loop (we cannot nest loops)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="devdb") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


async def probe(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect and run ``SELECT 1``; raise whatever went wrong."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
    finally:
        await conn.close(timeout=timeout)


def port_is_free(host: str, port: int) -> bool:
    """True if a server could listen on host:port. PostgreSQL and uvicorn set
    SO_REUSEADDR too, so TIME_WAIT leftovers from a previous run do not count
    as busy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    comm = Path(f"/proc/{pid}/comm")
    if comm.exists():
        # After a reboot the recorded pid may belong to an unrelated process.
        with contextlib.suppress(OSError):
            return comm.read_text().strip() in ("postgres", "postmaster")
    return True


class EmbeddedPostgres:
    """A private PostgreSQL cluster in a project-owned data directory.

    Initialised on first use (random superuser password kept in a 0600 file
    beside the data dir), started on 127.0.0.1 only, and reused across runs
    and processes: a running server is never restarted behind someone's back,
    and a stopped one comes back on its recorded port when that is free.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._explicit_dir = data_dir is not None
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else self._default_data_dir()
        self._bin_dir_override = Path(bin_dir) if bin_dir is not None else None
        self._bin_dir: Path | None = None

    # ----- locations -------------------------------------------------------

    @staticmethod
    def _default_data_dir() -> Path:
        """``postgres`` in ORCHESTRATOR_DB_LOCAL_DIR, default ``<project>/.local``;
        when that is not set, we are root and the server user could not reach
        it (e.g. under /root), a per-project dir in /var/tmp."""
        from orchestrator_db.settings import get_settings

        local_dir = get_settings().local_dir
        if local_dir is not None:
            return Path(local_dir).resolve() / "postgres"
        preferred = PROJECT_ROOT / ".local" / "postgres"
        if not is_root() or server_user_can_reach(preferred):
            return preferred
        digest = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp") / f"orchestrator_db-{digest}" / "postgres"
        logger.info("%s is not reachable by OS user %r; using %s", preferred, SERVER_USER, fallback)
        return fallback

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    def _sidecar(self, suffix: str) -> Path:
        return self._data_dir.with_name(self._data_dir.name + suffix)

    @property
    def password_file(self) -> Path:
        return self._sidecar(".password")

    @property
    def port_file(self) -> Path:
        return self._sidecar(".port")

    @property
    def lock_file(self) -> Path:
        return self._sidecar(".lock")

    @property
    def log_file(self) -> Path:
        return self._data_dir / "server.log"

    @property
    def port(self) -> int | None:
        """Port of the running server, else the recorded one, else None."""
        running = self._running_port()
        return running if running is not None else self._recorded_port()

    @property
    def url(self) -> str:
        """Superuser URL for this cluster (valid once it has been started)."""
        port = self.port
        if port is None or not self.password_file.exists():
            raise DatabaseUnavailable(f"embedded cluster in {self._data_dir} was never started; call ensure_running()")
        return self._url_for(port)

    def _url_for(self, port: int) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{SUPERUSER}:{quote(password, safe='')}@{HOST}:{port}/postgres"

    @property
    def bin_dir(self) -> Path:
        """Server binaries; picked once, preferring the data dir's major version."""
        if self._bin_dir is None:
            self._bin_dir = self._find_bin_dir()
        return self._bin_dir

    def _find_bin_dir(self) -> Path:
        if self._bin_dir_override is not None:
            if not pg_bindir_ok(self._bin_dir_override):
                raise DatabaseUnavailable(
                    f"no initdb/pg_ctl/postgres in {self._bin_dir_override}\n{FIXES}"
                )
            return self._bin_dir_override
        candidates = candidate_bin_dirs()
        usable: list[tuple[Path, str]] = []
        for cand in candidates:
            major = self._major_of(cand)
            if major is not None:
                usable.append((cand, major))
        if not usable:
            why = "found none" if not candidates else f"none runnable ({', '.join(map(str, candidates))})"
            raise DatabaseUnavailable(f"no PostgreSQL server binaries: {why}.\n{FIXES}")
        wanted = self._cluster_major()
        if wanted is not None:
            for cand, major in usable:
                if major == wanted:
                    return cand
            raise DatabaseUnavailable(
                f"{self._data_dir} was created by PostgreSQL {wanted} but only "
                f"{', '.join(sorted({m for _, m in usable}))} binaries are installed: install "
                f"PostgreSQL {wanted} server binaries, or stop and delete {self._data_dir} "
                "(and its .password/.port files) to start afresh."
            )
        return usable[0][0]

    def _major_of(self, bindir: Path) -> str | None:
        """Major version of ``bindir``'s pg_ctl, run as the server user (so it
        also proves that user can execute it); None if it cannot run."""
        try:
            res = self._run([str(bindir / "pg_ctl"), "--version"], check=False, timeout=15)
        except (OSError, subprocess.SubprocessError):
            return None
        m = re.search(r"\(PostgreSQL\)\s+(\d+)", res.stdout)
        if res.returncode != 0 or not m:
            logger.info("skipping %s: %s", bindir, (res.stderr or res.stdout).strip())
            return None
        return m.group(1)

    def _cluster_major(self) -> str | None:
        with contextlib.suppress(OSError):
            return (self._data_dir / "PG_VERSION").read_text().strip()
        return None

    # ----- subprocess ------------------------------------------------------

    def _run(self, args: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server tool, as the server OS user when we are root
        (PostgreSQL refuses to run as root)."""
        cmd = ["runuser", "-u", SERVER_USER, "--", *args] if is_root() else args
        logger.debug("running %s", shlex.join(cmd))
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=scrubbed_env(), cwd="/",
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise DatabaseUnavailable(
                f"{Path(args[0]).name} failed (exit {res.returncode}): "
                f"{(res.stderr or res.stdout).strip()[-2000:]}"
            )
        return res

    # ----- state -----------------------------------------------------------

    def _postmaster_pid_lines(self) -> list[str] | None:
        try:
            return (self._data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    def _running_pid_port(self) -> tuple[int, int] | None:
        lines = self._postmaster_pid_lines()
        if not lines or len(lines) < 4:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except ValueError:
            return None
        return (pid, port) if _pid_alive(pid) else None

    def _running_port(self) -> int | None:
        found = self._running_pid_port()
        return found[1] if found else None

    def _recorded_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.port_file.read_text().strip())
        return None

    def _record_port(self, port: int) -> None:
        tmp = self.port_file.with_name(self.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, self.port_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise init/start/stop across processes (and threads: each call
        opens its own descriptor, and flock locks are per open file)."""
        self._prepare_parent()
        with open(self.lock_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _prepare_parent(self) -> None:
        parent = self._data_dir.parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        for p in reversed(missing):
            with contextlib.suppress(FileExistsError):
                p.mkdir(mode=0o755)
            if is_root():
                os.chmod(p, 0o755)  # umask may have hidden it from the server user
        if is_root():
            if parent.name.startswith("orchestrator_db-") and parent.parent == Path("/var/tmp"):
                st = parent.stat()
                if st.st_uid != 0 or parent.is_symlink():
                    raise DatabaseUnavailable(f"{parent} is not owned by root; remove it and retry")
            if not server_user_can_reach(parent):
                raise DatabaseUnavailable(
                    f"OS user {SERVER_USER!r} cannot reach {parent}; choose a data dir it can "
                    "traverse (e.g. under /var/tmp) or make its parents world-executable"
                )

    # ----- public operations ----------------------------------------------

    def ensure_running(self) -> str:
        """Initialise if needed, start if not running, and return the superuser URL."""
        with self._locked():
            return self._ensure_running_locked()

    def stop(self) -> None:
        """Stop the server if it runs (fast shutdown: open sessions are ended)."""
        with self._locked():
            self._stop_locked()

    def restart(self) -> str:
        """Stop and start again on the same port; returns the URL."""
        with self._locked():
            port = self._running_port() or self._recorded_port()
            self._stop_locked()
            if port is None:
                return self._ensure_running_locked()
            if not port_is_free(HOST, port):
                raise DatabaseUnavailable(f"cannot restart on port {port}: it is now in use by another process")
            self._start(port)
            return self._verify(port)

    def status(self) -> dict[str, object]:
        """What a human wants to know, without starting anything."""
        running = self._running_pid_port()
        return {
            "data_dir": str(self._data_dir),
            "initialised": (self._data_dir / "PG_VERSION").exists(),
            "running": running is not None,
            "pid": running[0] if running else None,
            "port": running[1] if running else self._recorded_port(),
            "log_file": str(self.log_file),
        }

    # ----- internals -------------------------------------------------------

    def _ensure_running_locked(self) -> str:
        self._ensure_initialised()
        running = self._running_pid_port()
        if running is not None:
            pid, port = running
            url = self._wait_until_answers(port)
            logger.info("reusing PostgreSQL (pid %d) on %s:%d from %s", pid, HOST, port, self._data_dir)
            if self._recorded_port() != port:
                self._record_port(port)
            return url
        # Not running: a stale postmaster.pid (e.g. after a crash or reboot) would
        # block the start if its pid now belongs to another process.
        lines = self._postmaster_pid_lines()
        if lines and lines[0].strip().isdigit() and not _pid_alive(int(lines[0])):
            logger.info("removing stale postmaster.pid (pid %s is gone)", lines[0].strip())
            (self._data_dir / "postmaster.pid").unlink(missing_ok=True)
        recorded = self._recorded_port()
        if recorded is not None and port_is_free(HOST, recorded):
            self._start(recorded)
            return self._verify(recorded)
        if recorded is not None:
            logger.warning("recorded port %d is taken; picking a new one", recorded)
        last_error: DatabaseUnavailable | None = None
        for _ in range(3):  # a freshly picked port can be grabbed before we bind it
            port = _free_port()
            try:
                self._start(port)
            except DatabaseUnavailable as exc:
                last_error = exc
                if "could not bind" in str(exc) or "already in use" in str(exc):
                    continue
                raise
            self._record_port(port)
            return self._verify(port)
        assert last_error is not None
        raise last_error

    def _ensure_initialised(self) -> None:
        if (self._data_dir / "PG_VERSION").exists():
            if not self.password_file.exists():
                raise DatabaseUnavailable(
                    f"{self._data_dir} exists but its password file {self.password_file} is missing; "
                    "stop any server using it and delete the directory to start afresh"
                )
            return
        if self._data_dir.exists() and any(self._data_dir.iterdir()):
            raise DatabaseUnavailable(
                f"{self._data_dir} is not empty but holds no PostgreSQL cluster; move it away"
            )
        bindir = self.bin_dir
        staging = self._sidecar(".initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        pwfile = self._sidecar(".pwfile")
        password = secrets.token_urlsafe(24)
        try:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")
            if is_root():
                ent = pwd.getpwnam(SERVER_USER)
                os.chown(pwfile, ent.pw_uid, ent.pw_gid)
                os.chown(staging, ent.pw_uid, ent.pw_gid)
            logger.info("initialising PostgreSQL cluster in %s with %s", self._data_dir, bindir)
            self._run(
                [
                    str(bindir / "initdb"), "-D", str(staging), "-U", SUPERUSER,
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                    f"--locale={initdb_locale()}", "--no-sync", "--no-instructions",
                ],
                timeout=300,
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        # The password file is readable by us only (root-owned when root).
        tmp = self._sidecar(".password.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        os.replace(tmp, self.password_file)
        if self._data_dir.exists():
            self._data_dir.rmdir()  # empty, checked above
        os.replace(staging, self._data_dir)
        os.chmod(self._data_dir, 0o700)
        self.port_file.unlink(missing_ok=True)

    def _start(self, port: int) -> None:
        sock_dir = str(self._data_dir) if len(str(self._data_dir)) <= _SOCKET_PATH_MAX else ""
        opts = shlex.join(
            ["-p", str(port), "-h", HOST, "-k", sock_dir, "-c", f"max_connections={MAX_CONNECTIONS}"]
        )
        logger.info("starting PostgreSQL on %s:%d (data %s, log %s)", HOST, port, self._data_dir, self.log_file)
        try:
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"), "-D", str(self._data_dir), "-l", str(self.log_file),
                    "-w", "-t", str(_PG_CTL_TIMEOUT), "-o", opts, "start",
                ],
                timeout=_PG_CTL_TIMEOUT + 30,
            )
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(f"{exc}\nserver log ({self.log_file}):\n{self._log_tail()}") from exc

    def _stop_locked(self) -> None:
        if self._running_pid_port() is None:
            logger.debug("PostgreSQL in %s is not running", self._data_dir)
            return
        logger.info("stopping PostgreSQL in %s", self._data_dir)
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self._data_dir), "-m", "fast", "-w",
             "-t", str(_PG_CTL_TIMEOUT), "stop"],
            timeout=_PG_CTL_TIMEOUT + 30,
        )

    def _verify(self, port: int) -> str:
        url = self._url_for(port)
        try:
            run_sync(lambda: probe(url))
        except Exception as exc:  # noqa: BLE001
            raise DatabaseUnavailable(
                f"started PostgreSQL in {self._data_dir} but cannot log in: {exc}\n"
                f"server log ({self.log_file}):\n{self._log_tail()}"
            ) from exc
        return url

    def _wait_until_answers(self, port: int, deadline: float = 15.0) -> str:
        """A server found running may still be starting (status line of
        postmaster.pid); give it a moment before declaring it broken."""
        end = time.monotonic() + deadline
        while True:
            try:
                return self._verify(port)
            except DatabaseUnavailable:
                if time.monotonic() >= end:
                    raise
                time.sleep(0.25)

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self._data_dir)!r})"
