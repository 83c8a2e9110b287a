"""Tables and engines of the SQL store: one schema, two dialects (SQLite and PostgreSQL).

Why this shape:

- `accord_objects` holds the current version of every object as one JSON document, keyed by
  `(kind, name)`.  `domain` and `labels` are copied out of the document so a future index or operator
  query does not have to parse JSON; the document stays the single source of truth.
- `accord_events` is the change log `watch` replays: one row per revision, *dense* (a write takes its
  revisions and writes their events in the same transaction, so a rolled-back write leaves no hole).
  Compaction deletes the oldest rows; the lowest surviving revision tells a watcher whether the history
  it asks for still exists.
- `accord_counters` holds the global revision (`revision`), the audit chain position (`audit`: value
  = last seq, text = head hash) and the schema version.  Every write transaction starts by incrementing
  the `revision` row; on PostgreSQL that row lock is what serialises writers (also across replicas),
  and it makes commit order equal revision order, so a poller reading `revision > last` never skips
  a write that commits late.
- Table names carry an `accord_` prefix because a PostgreSQL database may be shared with other tools.

SQLite is opened in WAL mode with `synchronous=FULL` (an acknowledged write survives power loss) and a
busy timeout; pysqlite's own transaction handling is switched off and writes begin with
`BEGIN IMMEDIATE`, so two writers (threads or processes on the same file) queue on the file lock instead
of failing with "database is locked" half-way through a transaction.  Reads begin with a plain
(deferred) `BEGIN`, which in WAL mode gives them a consistent snapshot without blocking writers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from accord.errors import InvalidArgument
from accord.resources.audit import GENESIS_HASH

SCHEMA_VERSION = 1

# Execution option that makes the SQLite `begin` hook emit BEGIN IMMEDIATE.
WRITE_TRANSACTION = "accord_write"

# Counter rows.
REVISION = "revision"
AUDIT = "audit"
SCHEMA = "schema"

metadata = sa.MetaData()

_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

objects = sa.Table(
    "accord_objects",
    metadata,
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("domain", sa.String(63), nullable=False, server_default=""),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("resource_version", sa.BigInteger, nullable=False),
    sa.Column("doc", _Json, nullable=False),
)

events = sa.Table(
    "accord_events",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("doc", _Json, nullable=False),
)

counters = sa.Table(
    "accord_counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("text", sa.String(128), nullable=False, server_default=""),
)


def normalise_url(url: str) -> URL:
    """Parse a store URL; `postgresql://` means psycopg 3.  InvalidArgument names what is wrong."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidArgument(f"store URL {url!r} is not a valid database URL: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise InvalidArgument(
                f"store URL uses driver {driver!r}; Accord talks to PostgreSQL through psycopg 3: "
                f"use postgresql:// or postgresql+psycopg://"
            )
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise InvalidArgument(f"store URL uses SQLite driver {driver!r}; use sqlite:///PATH")
        if not parsed.database or parsed.database == ":memory:":
            raise InvalidArgument(
                "an SQLite store needs a file (sqlite:///PATH); for a throwaway store use memory://"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise InvalidArgument(
        f"unsupported store URL scheme {parsed.drivername!r}: use memory://, sqlite:///PATH or "
        f"postgresql://USER@HOST:PORT/DB"
    )


def redacted(url: URL) -> str:
    """The URL as it may appear in logs and error messages (password hidden)."""
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL, *, busy_timeout: float) -> Engine:
    """An engine set up for the store's transaction discipline (see the module docstring)."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout=busy_timeout)
    return sa.create_engine(
        url,
        connect_args={"connect_timeout": max(1, int(min(busy_timeout, 10.0)))},
        pool_size=5,
        max_overflow=10,
        pool_timeout=busy_timeout,
    )


def _sqlite_engine(url: URL, *, busy_timeout: float) -> Engine:
    database = url.database or ""
    if not database.startswith("file:"):
        # Convenience for a fresh node directory; if it fails, the first call reports it as Unavailable.
        with contextlib.suppress(OSError):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
        poolclass=sa.QueuePool,
        pool_size=5,
        max_overflow=10,
    )
    busy_ms = int(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_TRANSACTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_schema(conn: sa.Connection) -> None:
    """Create tables and counter rows if missing (idempotent; call inside a write transaction)."""
    if conn.dialect.name == "postgresql":
        # Two replicas opening an empty database at once would both try CREATE TABLE.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7716201)"))
    metadata.create_all(conn, checkfirst=True)
    rows = [
        {"name": REVISION, "value": 0, "text": ""},
        {"name": AUDIT, "value": 0, "text": GENESIS_HASH},
        {"name": SCHEMA, "value": SCHEMA_VERSION, "text": ""},
    ]
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(counters).on_conflict_do_nothing(), rows)
    else:
        from sqlalchemy.dialects import sqlite

        conn.execute(sqlite.insert(counters).on_conflict_do_nothing(), rows)
    found = conn.execute(sa.select(counters.c.value).where(counters.c.name == SCHEMA)).scalar_one()
    if found > SCHEMA_VERSION:
        raise InvalidArgument(
            f"the store was written by a newer Accord (schema {found}, this one knows {SCHEMA_VERSION}); "
            f"upgrade Accord before opening it"
        )
