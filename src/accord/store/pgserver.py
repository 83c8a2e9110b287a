"""A throwaway PostgreSQL server for tests and benchmarks (initdb + pg_ctl in a temporary directory).

Why it is in the package and not in `tests/`: the contract tests, other engineers' node tests and
`bench/store.py` all need the same server, started the same way, so PostgreSQL is a tested backend
rather than a hope.  Nothing in a running node imports this module.

How: find the server binaries (`pg_config --bindir`, `/usr/lib/postgresql/*/bin`, then PATH), `initdb`
with trust authentication into a fresh temporary directory, start with `pg_ctl` listening only on
127.0.0.1 at a free port, with the unix socket inside the same directory (nothing touches
/var/run/postgresql).  PostgreSQL refuses to run as root, so under root every server command runs as the
`postgres` OS user through `runuser` and the directory is handed to that user.  `fsync=False` switches
off fsync and full-page writes: fine for tests (a lost server loses nothing anyone keeps), wrong for a
benchmark of durable writes, so the benchmark keeps the default.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

from accord.errors import InvalidArgument, Unavailable

SERVER_USER = "postgres"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bindir() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One running server; `create_database()` hands out fresh, independent databases."""

    def __init__(self, bindir: Path, base_dir: Path, port: int, *, owns_dir: bool) -> None:
        self.bindir = bindir
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir
        self.log_file = base_dir / "server.log"
        self.port = port
        self._owns_dir = owns_dir
        self._running = False
        self._fsync = True

    @classmethod
    def start(
        cls,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        fsync: bool = True,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """initdb + start on 127.0.0.1:<free port>; `Unavailable` with the server log if it fails."""
        found = bindir or find_bindir()
        if found is None:
            raise Unavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the "
                "`postgresql` package (apt-get install -y postgresql)",
                retryable=False,
            )
        owns_dir = base_dir is None
        directory = Path(tempfile.mkdtemp(prefix="accord-pg-")) if base_dir is None else base_dir
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(found, directory, free_port(), owns_dir=owns_dir)
        try:
            server._prepare_dir()
            server._run(
                "initdb",
                [
                    *("-D", str(server.data_dir), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8"),
                    *("--locale=C", "--no-sync", "--no-instructions"),
                ],
                timeout=timeout,
            )
            for attempt in range(3):
                try:
                    server._pg_ctl_start(fsync=fsync, timeout=timeout)
                    break
                except Unavailable:
                    if attempt == 2 or "could not bind" not in server.log_tail():
                        raise
                    server.port = free_port()
        except BaseException:
            server.stop()
            raise
        return server

    # -- using it ---------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of a database on this server (trust auth: no password)."""
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name unless given) and return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not _DB_NAME.match(name):
            raise InvalidArgument(f"database name {name!r} must match {_DB_NAME.pattern}")
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user=SERVER_USER, dbname="postgres", autocommit=True
            ) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as exc:
            raise Unavailable(f"cannot create database {name!r} on 127.0.0.1:{self.port}: {exc}") from exc
        return self.url(name)

    def halt(self) -> None:
        """Stop the server but keep its data (tests of outages); `resume()` starts it again."""
        if self._running:
            self._running = False
            self._run("pg_ctl", ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"])

    def resume(self, timeout: float = 60.0) -> None:
        """Start a halted server again on the same port with the same settings."""
        if not self._running:
            self._pg_ctl_start(fsync=self._fsync, timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; idempotent."""
        if self._running:
            self._running = False
            with contextlib.suppress(Unavailable):
                self._run("pg_ctl", ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"])
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _pg_ctl_start(self, *, fsync: bool, timeout: float) -> None:
        options = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
        ]
        self._fsync = fsync
        if not fsync:
            options += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
        self._running = True
        self._run(
            "pg_ctl",
            [
                *("-D", str(self.data_dir), "-l", str(self.log_file), "-o", " ".join(options)),
                *("-w", "-t", str(int(timeout)), "start"),
            ],
            timeout=timeout + 10,
        )

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise Unavailable("running as root needs `runuser` to start PostgreSQL as a normal user")
        return [runuser, "-u", SERVER_USER, "--"]

    def _prepare_dir(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            account = pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise Unavailable(
                f"PostgreSQL refuses to run as root and there is no {SERVER_USER!r} OS user to run it as",
                retryable=False,
            ) from exc
        os.chown(self.base_dir, account.pw_uid, account.pw_gid)
        self.base_dir.chmod(0o700)

    def _run(self, tool: str, args: list[str], *, timeout: float = 60.0) -> None:
        command = [*self._as_server_user(), str(self.bindir / tool), *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=self.base_dir, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"{tool} did not finish within {timeout:.0f}s\n{self.log_tail()}") from exc
        if result.returncode != 0:
            raise Unavailable(
                f"{tool} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                f"\n{self.log_tail()}",
                retryable=False,
            )
