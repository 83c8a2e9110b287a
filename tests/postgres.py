"""PostgreSQL for the test session: find (or, under CI, install) the server, start it once, report why not.

Policy: under CI (`CI=true`) PostgreSQL is a tested backend, so a missing server is installed with
apt-get (bounded by a timeout) and a server that cannot start *fails* the tests that need it.  On a
developer machine without PostgreSQL those tests are skipped, loudly: the skip reason is repeated in the
terminal summary so nobody mistakes a green run for a PostgreSQL-tested one.  Starting the server is
`accord.store.pgserver` (shared with `bench/store.py`).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from accord.errors import AccordError
from accord.store.pgserver import PostgresServer, find_bindir

APT_TIMEOUT_SECONDS = 600


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def install_with_apt() -> str:
    """apt-get install postgresql; returns '' on success or what went wrong."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "cannot install PostgreSQL: apt-get needs root on a Debian-like system"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} did not finish within {APT_TIMEOUT_SECONDS}s"
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            return f"{' '.join(command)} failed (exit {result.returncode}): {tail}"
    return ""


def start_for_session() -> tuple[PostgresServer | None, str]:
    """(server, '') or (None, why PostgreSQL tests cannot run)."""
    if find_bindir() is None:
        if not running_under_ci():
            return None, (
                "PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin, "
                "PATH); install the `postgresql` package to run the PostgreSQL store tests"
            )
        problem = install_with_apt()
        if problem:
            return None, problem
    try:
        return PostgresServer.start(fsync=False), ""
    except AccordError as exc:
        return None, f"PostgreSQL did not start: {exc.message}"
