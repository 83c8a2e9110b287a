"""SqlStore: the Store contract on SQLite (one node) or PostgreSQL (replicas sharing one database).

Design notes (the guarantees themselves are listed in `accord.store.base`):

- **One code base, two dialects.**  SQLAlchemy 2 Core with a *sync* engine; each public method runs one
  blocking function in `asyncio.to_thread` (DESIGN.md: blocking drivers via to_thread).  The dialect
  differences (WAL and BEGIN IMMEDIATE on SQLite, JSONB and an advisory lock for DDL on PostgreSQL)
  live in `accord.store.schema`.
- **One transaction per write.**  A write first increments the `revision` counter row by the number of
  revisions it needs (1, or 2 with an audit entry) and only then reads the current object.  On
  PostgreSQL the counter's row lock serialises writers, so the read sees the previous writer's commit
  and revisions commit in order; on SQLite `BEGIN IMMEDIATE` takes the file's write lock for the same
  effect.  The object row, its change event, and (given an `AuditEntry`) the chained AuditRecord with
  its own event, plus the new audit head, are written before the single COMMIT.  Any failure (name
  taken, stale version, lost connection) rolls all of it back: no revision, no event, no audit record.
  Within one process SQLite writers also queue on a mutex, so they do not spin in SQLite's busy handler.
- **Meta is stamped by `accord.store.common`** exactly as the MemoryStore does, so both stores agree
  on what uid, generation and timestamps mean, and on the audit record's hash.
- **Watch = replay + follow.**  A watcher reads events with revision > `last` in batches from a
  snapshot (SQLite's deferred read transaction, PostgreSQL's REPEATABLE READ) that also yields the
  oldest retained revision: `last` older than that means history was compacted and the watcher gets
  `Gone`.  Having read everything, it sleeps until a local write wakes it or `poll_interval` passes;
  the poll is how writes of *other* processes (another replica, a second process on the same SQLite
  file) are seen.  `last` advances over events of other kinds too, so a filtered watcher of a quiet
  kind does not fall out of the retention window.
- **Compaction** runs inside a write every `retention // 10` revisions (at most 1000), deleting events
  older than the newest `event_retention`; the window is thus between `event_retention` and
  `event_retention + compact_every` revisions long.
- **A watch outlives database outages.**  While the database is unreachable a watcher retries with
  backoff (up to 5 s) from the revision it had reached, logging once, so a controller's watch survives a
  PostgreSQL restart without relisting; only `Gone` or a closed store end it.
- **Errors.**  A taken name is `AlreadyExists` with the kind's code; a connection failure, a locked file
  or a pool timeout is `Unavailable` (retryable) naming the URL without its password.  Reads retry once
  on a connection the pool found dead (e.g. after a database restart); writes never retry on their own
  because a lost COMMIT acknowledgement cannot be told apart from a lost write.
- **Cancellation.**  Cancelling the awaiting coroutine does not stop a write already running in its
  thread; the write then commits or rolls back as a whole, and watchers see it by polling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from accord.errors import (
    AccordError,
    ErrorCode,
    Gone,
    InvalidArgument,
    Unavailable,
    already_exists,
    not_found,
    stale_version,
)
from accord.resources.audit import AuditEntry, AuditRecord
from accord.resources.meta import AnyResource, Selector, utcnow
from accord.resources.registry import parse_resource
from accord.store.base import EventType, R, WatchEvent
from accord.store.common import (
    DEFAULT_EVENT_RETENTION,
    as_selector,
    chain_record,
    stamp_created,
    stamp_updated,
)
from accord.store.schema import (
    AUDIT,
    REVISION,
    WRITE_TRANSACTION,
    counters,
    create_schema,
    create_store_engine,
    events,
    normalise_url,
    objects,
    redacted,
)

T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_BUSY_TIMEOUT = 30.0
WATCH_BATCH = 1000
MAX_WATCH_RETRY_DELAY = 5.0

log = logging.getLogger(__name__)

# The write path's statements, built once with bind parameters (SQLAlchemy then reuses the compiled
# form; building them per call cost about a fifth of a write).
_TAKE_REVISIONS = (
    sa.update(counters)
    .where(counters.c.name == REVISION)
    .values(value=counters.c.value + sa.bindparam("count", type_=sa.BigInteger))
    .returning(counters.c.value)
)
_NEXT_AUDIT_SEQ = (
    sa.update(counters)
    .where(counters.c.name == AUDIT)
    .values(value=counters.c.value + 1)
    .returning(counters.c.value, counters.c.text)
)
_SET_AUDIT_HEAD = (
    sa.update(counters).where(counters.c.name == AUDIT).values(text=sa.bindparam("head", type_=sa.String))
)
_OBJECT_DOC = sa.select(objects.c.doc).where(
    objects.c.kind == sa.bindparam("b_kind"), objects.c.name == sa.bindparam("b_name")
)
_INSERT_OBJECT = sa.insert(objects)
_UPDATE_OBJECT = sa.update(objects).where(
    objects.c.kind == sa.bindparam("b_kind"), objects.c.name == sa.bindparam("b_name")
)
_DELETE_OBJECT = sa.delete(objects).where(
    objects.c.kind == sa.bindparam("b_kind"), objects.c.name == sa.bindparam("b_name")
)
_INSERT_EVENTS = sa.insert(events)
_COMPACT_EVENTS = sa.delete(events).where(events.c.revision <= sa.bindparam("cut", type_=sa.BigInteger))


@dataclass
class _EventBatch:
    """What one watch poll read from one snapshot."""

    floor: int | None  # oldest retained revision (None: no events at all)
    through: int  # every revision <= this has been looked at
    events: list[WatchEvent] = field(default_factory=list)
    full: bool = False  # more may follow at once


class SqlStore:
    """The durable Store: `SqlStore("sqlite:///node/accord.db")` or `SqlStore("postgresql://...")`.

    Opening is cheap (no I/O); tables are created on the first call.  `url` is the redacted URL.
    """

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        event_retention: int = DEFAULT_EVENT_RETENTION,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if poll_interval <= 0:
            raise InvalidArgument(f"poll_interval must be > 0 seconds, got {poll_interval}")
        if event_retention < 1:
            raise InvalidArgument(f"event_retention must be >= 1 event, got {event_retention}")
        if busy_timeout <= 0:
            raise InvalidArgument(f"busy_timeout must be > 0 seconds, got {busy_timeout}")
        self._url = normalise_url(url)
        self.url = redacted(self._url)
        self.dialect = self._url.get_backend_name()
        self._engine = create_store_engine(self._url, busy_timeout=busy_timeout)
        self._poll_interval = poll_interval
        self._retention = event_retention
        self._compact_every = max(1, min(event_retention // 10, 1000))
        self._write_mutex: AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._local_writes = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r})"

    # -- the Store protocol -------------------------------------------------------------------------

    async def get(self, kind: str, name: str) -> AnyResource:
        return await asyncio.to_thread(self._read, f"get {kind} {name}", lambda c: _get(c, kind, name))

    async def list(
        self,
        kind: str,
        *,
        selector: Selector | str | dict[str, str] | None = None,
        domain: str | None = None,
    ) -> list[AnyResource]:
        sel = as_selector(selector)
        found = await asyncio.to_thread(self._read, f"list {kind}", lambda c: _list(c, kind, domain))
        return [obj for obj in found if sel is None or sel.matches(obj.meta.labels)]

    async def create(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        stored: R = await asyncio.to_thread(
            self._write, f"create {obj.kind} {obj.meta.name}", lambda tx: tx.create(obj, audit)
        )
        self._wake_watchers()
        return stored

    async def update(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        stored: R = await asyncio.to_thread(
            self._write, f"update {obj.kind} {obj.meta.name}", lambda tx: tx.update(obj, audit)
        )
        self._wake_watchers()
        return stored

    async def delete(
        self,
        kind: str,
        name: str,
        *,
        resource_version: int | None = None,
        audit: AuditEntry | None = None,
    ) -> AnyResource:
        removed: AnyResource = await asyncio.to_thread(
            self._write, f"delete {kind} {name}", lambda tx: tx.delete(kind, name, resource_version, audit)
        )
        self._wake_watchers()
        return removed

    async def append_audit(self, entry: AuditEntry) -> AuditRecord:
        record: AuditRecord = await asyncio.to_thread(
            self._write, f"audit {entry.action}", lambda tx: tx.audit_only(entry)
        )
        self._wake_watchers()
        return record

    async def revision(self) -> int:
        return await asyncio.to_thread(self._read, "read the revision", _current_revision)

    async def watch(
        self,
        kind: str | None = None,
        *,
        since: int = 0,
        selector: Selector | str | dict[str, str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        sel = as_selector(selector)
        last = since
        outage: float | None = None  # current retry delay while the database is unreachable
        while not self._closed:
            seen_writes = self._local_writes
            try:
                batch = await asyncio.to_thread(
                    self._read, "watch", functools.partial(_events_after, last=last, kind=kind), snapshot=True
                )
            except Unavailable as exc:
                if self._closed:
                    return
                if not exc.retryable:
                    raise
                if outage is None:
                    log.warning("watch paused at revision %d, retrying: %s", last, exc.message)
                outage = min(MAX_WATCH_RETRY_DELAY, (outage or self._poll_interval / 2) * 2)
                await asyncio.sleep(outage)
                continue
            if outage is not None:
                log.info("watch resumed at revision %d on %s", last, self.url)
                outage = None
            if batch.floor is not None and last < batch.floor - 1:
                raise Gone(
                    f"watch from revision {since} is too old: history starts at {batch.floor}; "
                    f"list again and watch from the current revision"
                )
            for event in batch.events:
                last = event.revision
                if sel is not None and not sel.matches(event.object.get("meta", {}).get("labels", {})):
                    continue
                yield event
            last = max(last, batch.through)
            if not batch.full:
                await self._wait_for_change(seen_writes)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_watchers()
        await asyncio.to_thread(self._engine.dispose)

    # -- running blocking work ----------------------------------------------------------------------

    def _read(self, what: str, body: Callable[[sa.Connection], T], *, snapshot: bool = False) -> T:
        """Run `body` on a connection; retry once if the pool handed out a dead connection."""
        for attempt in (1, 2):
            with self._database_errors(what):
                try:
                    self._ensure_open_with_schema()
                    with self._engine.connect() as conn:
                        if snapshot and self.dialect == "postgresql":
                            conn.execution_options(isolation_level="REPEATABLE READ")
                        return body(conn)
                except sa_exc.DBAPIError as exc:
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, what: str, body: Callable[[_WriteTransaction], T]) -> T:
        """Run `body` in one write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self._database_errors(what):
            self._ensure_open_with_schema()
            with self._write_mutex, self._engine.connect() as conn:
                conn.execution_options(**{WRITE_TRANSACTION: True})
                with conn.begin():
                    tx = _WriteTransaction(conn, self._retention, self._compact_every)
                    result = body(tx)
                    tx.flush()
                    return result

    def _ensure_open_with_schema(self) -> None:
        if self._closed:
            raise Unavailable(f"store {self.url} is closed", retryable=False)
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._engine.connect() as conn:
                conn.execution_options(**{WRITE_TRANSACTION: True})
                with conn.begin():
                    create_schema(conn)
            self._schema_ready = True

    @contextmanager
    def _database_errors(self, what: str) -> Iterator[None]:
        """Turn driver exceptions into AccordErrors naming the store (never its password)."""
        try:
            yield
        except AccordError:
            raise
        except sa_exc.DataError as exc:
            raise InvalidArgument(
                f"store {self.url} cannot hold the data ({what}): {self._detail(exc)}"
            ) from exc
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise Unavailable(f"store {self.url} is unavailable ({what}): {self._detail(exc)}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable(
                    f"store {self.url} lost its connection ({what}): {self._detail(exc)}"
                ) from exc
            raise Unavailable(
                f"store {self.url} failed ({what}): {self._detail(exc)}", retryable=False
            ) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise Unavailable(
                f"store {self.url} failed ({what}): {self._detail(exc)}", retryable=False
            ) from exc

    def _detail(self, exc: sa_exc.SQLAlchemyError) -> str:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        text = lines[0] if lines else type(cause).__name__
        password = self._url.password
        return text.replace(str(password), "***") if password else text

    # -- waking watchers ----------------------------------------------------------------------------

    def _wake_watchers(self) -> None:
        self._local_writes += 1
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_change(self, seen_writes: int) -> None:
        """Sleep until a local write after `seen_writes`, close, or `poll_interval`."""
        if self._local_writes != seen_writes or self._closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout=self._poll_interval)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


class _WriteTransaction:
    """The statements of one write, on a connection inside BEGIN ... COMMIT."""

    def __init__(self, conn: sa.Connection, retention: int, compact_every: int) -> None:
        self._conn = conn
        self._retention = retention
        self._compact_every = compact_every
        self._events: list[dict[str, Any]] = []
        self._first_revision = 0
        self._last_revision = 0

    def create(self, obj: R, audit: AuditEntry | None) -> R:
        revision = self._take_revisions(1 if audit is None else 2)
        now = utcnow()
        stored = stamp_created(obj, revision, now)
        self._insert_object(stored)
        if audit is not None:
            self._chain(audit, target_version=revision, revision=revision + 1, now=now)
        return stored

    def update(self, obj: R, audit: AuditEntry | None) -> R:
        revision = self._take_revisions(1 if audit is None else 2)
        current = self._current(obj.kind, obj.meta.name)
        if current.meta.resource_version != obj.meta.resource_version:
            raise stale_version(
                obj.kind, obj.meta.name, obj.meta.resource_version, current.meta.resource_version
            )
        now = utcnow()
        stored = stamp_updated(current, obj, revision, now)
        doc = stored.to_document()
        self._conn.execute(
            _UPDATE_OBJECT,
            {
                "b_kind": stored.kind,
                "b_name": stored.meta.name,
                "domain": stored.meta.domain,
                "labels": stored.meta.labels,
                "resource_version": revision,
                "doc": doc,
            },
        )
        self._record("MODIFIED", revision, stored.kind, stored.meta.name, doc)
        if audit is not None:
            self._chain(audit, target_version=revision, revision=revision + 1, now=now)
        return stored

    def delete(
        self, kind: str, name: str, resource_version: int | None, audit: AuditEntry | None
    ) -> AnyResource:
        revision = self._take_revisions(1 if audit is None else 2)
        current = self._current(kind, name)
        if resource_version is not None and current.meta.resource_version != resource_version:
            raise stale_version(kind, name, resource_version, current.meta.resource_version)
        self._conn.execute(_DELETE_OBJECT, {"b_kind": kind, "b_name": name})
        self._record("DELETED", revision, kind, name, current.to_document())
        if audit is not None:
            self._chain(audit, target_version=revision, revision=revision + 1, now=utcnow())
        return current

    def audit_only(self, entry: AuditEntry) -> AuditRecord:
        revision = self._take_revisions(1)
        return self._chain(entry, target_version=0, revision=revision, now=utcnow())

    def flush(self) -> None:
        """Write the collected events and compact old ones (last statements before COMMIT)."""
        if self._events:
            self._conn.execute(_INSERT_EVENTS, self._events)
        first, last = self._first_revision, self._last_revision
        if last and last // self._compact_every != (first - 1) // self._compact_every:
            self._conn.execute(_COMPACT_EVENTS, {"cut": last - self._retention})

    # -- pieces ---------------------------------------------------------------------------------

    def _take_revisions(self, count: int) -> int:
        """Reserve `count` consecutive revisions (locks the counter row); returns the first."""
        last = self._conn.execute(_TAKE_REVISIONS, {"count": count}).scalar_one()
        self._first_revision, self._last_revision = last - count + 1, last
        return int(last - count + 1)

    def _current(self, kind: str, name: str) -> AnyResource:
        doc = self._conn.execute(_OBJECT_DOC, {"b_kind": kind, "b_name": name}).scalar_one_or_none()
        if doc is None:
            raise not_found(kind, name)
        return parse_resource(doc)

    def _insert_object(self, stored: AnyResource) -> None:
        doc = stored.to_document()
        try:
            self._conn.execute(
                _INSERT_OBJECT,
                {
                    "kind": stored.kind,
                    "name": stored.meta.name,
                    "domain": stored.meta.domain,
                    "labels": stored.meta.labels,
                    "resource_version": stored.meta.resource_version,
                    "doc": doc,
                },
            )
        except sa_exc.IntegrityError as exc:
            if stored.kind == AuditRecord.KIND and stored.meta.name.startswith("audit-"):
                raise AccordError(
                    f"audit record {stored.meta.name} already exists although the audit counter says it "
                    f"is new: the stored audit state was altered; run `accord audit verify`",
                    code=ErrorCode.AUDIT_CHAIN_BROKEN,
                ) from exc
            raise already_exists(stored.kind, stored.meta.name) from exc
        self._record("ADDED", stored.meta.resource_version, stored.kind, stored.meta.name, doc)

    def _chain(self, entry: AuditEntry, *, target_version: int, revision: int, now: datetime) -> AuditRecord:
        seq, prev_hash = self._conn.execute(_NEXT_AUDIT_SEQ).one()
        record = chain_record(
            entry,
            seq=int(seq),
            prev_hash=str(prev_hash),
            revision=revision,
            target_version=target_version,
            now=now,
        )
        self._conn.execute(_SET_AUDIT_HEAD, {"head": record.spec.hash})
        self._insert_object(record)
        return record

    def _record(
        self, event_type: EventType, revision: int, kind: str, name: str, doc: dict[str, Any]
    ) -> None:
        labels = doc.get("meta", {}).get("labels", {})
        row = {"revision": revision, "kind": kind, "name": name, "type": event_type, "labels": labels}
        self._events.append({**row, "doc": doc})


# -- read queries (run in a worker thread) --------------------------------------------------------


def _get(conn: sa.Connection, kind: str, name: str) -> AnyResource:
    doc = conn.execute(_OBJECT_DOC, {"b_kind": kind, "b_name": name}).scalar_one_or_none()
    if doc is None:
        raise not_found(kind, name)
    return parse_resource(doc)


def _list(conn: sa.Connection, kind: str, domain: str | None) -> list[AnyResource]:
    query = sa.select(objects.c.name, objects.c.doc).where(objects.c.kind == kind)
    if domain is not None:
        query = query.where(objects.c.domain == domain)
    # Sorted here, not by ORDER BY: PostgreSQL's collation may order '-' differently from Python.
    rows = sorted(conn.execute(query).all(), key=lambda row: str(row.name))
    return [parse_resource(row.doc) for row in rows]


def _current_revision(conn: sa.Connection) -> int:
    value = conn.execute(sa.select(counters.c.value).where(counters.c.name == REVISION)).scalar_one()
    return int(value)


def _events_after(conn: sa.Connection, *, last: int, kind: str | None) -> _EventBatch:
    bounds = sa.select(sa.func.min(events.c.revision), sa.func.max(events.c.revision))
    floor, head = conn.execute(bounds).one()
    if head is None:
        return _EventBatch(floor=None, through=last)
    query = (
        sa.select(events.c.revision, events.c.type, events.c.kind, events.c.name, events.c.doc)
        .where(events.c.revision > last, events.c.revision <= head)
        .order_by(events.c.revision)
        .limit(WATCH_BATCH)
    )
    if kind is not None:
        query = query.where(events.c.kind == kind)
    rows = conn.execute(query).all()
    full = len(rows) == WATCH_BATCH
    found = [
        WatchEvent(type=row.type, revision=row.revision, kind=row.kind, name=row.name, object=row.doc)
        for row in rows
    ]
    through = int(rows[-1].revision) if full else max(int(head), last)
    return _EventBatch(floor=int(floor), through=through, events=found, full=full)
