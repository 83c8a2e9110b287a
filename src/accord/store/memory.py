"""MemoryStore: the Store contract in plain Python dicts, for unit tests and throwaway nodes.

Same semantics as the SQL stores (it passes the same contract suite) but nothing survives the process.
A single asyncio lock serialises writes, which is what a transaction gives the SQL stores.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from accord.errors import Gone, already_exists, not_found, stale_version
from accord.resources.audit import GENESIS_HASH, AuditEntry, AuditRecord
from accord.resources.meta import AnyResource, Selector, utcnow
from accord.store.base import R, WatchEvent
from accord.store.common import (
    DEFAULT_EVENT_RETENTION,
    as_selector,
    chain_record,
    matches,
    stamp_created,
    stamp_updated,
)


class MemoryStore:
    def __init__(self, *, event_retention: int = DEFAULT_EVENT_RETENTION) -> None:
        self._objects: dict[tuple[str, str], AnyResource] = {}
        self._events: list[WatchEvent] = []
        self._revision = 0
        self._audit_seq = 0
        self._audit_head = GENESIS_HASH
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._retention = event_retention
        self._closed = False

    async def get(self, kind: str, name: str) -> AnyResource:
        obj = self._objects.get((kind, name))
        if obj is None:
            raise not_found(kind, name)
        return obj.model_copy(deep=True)

    async def list(
        self,
        kind: str,
        *,
        selector: Selector | str | dict[str, str] | None = None,
        domain: str | None = None,
    ) -> list[AnyResource]:
        sel = as_selector(selector)
        return [
            obj.model_copy(deep=True)
            for (k, _), obj in sorted(self._objects.items())
            if k == kind and matches(obj, sel, domain)
        ]

    async def create(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        async with self._lock:
            if (obj.kind, obj.meta.name) in self._objects:
                raise already_exists(obj.kind, obj.meta.name)
            now = utcnow()
            stored = stamp_created(obj, self._next(), now)
            self._put("ADDED", stored)
            if audit is not None:
                self._audit(audit, stored.meta.resource_version, now)
        await self._notify()
        return stored.model_copy(deep=True)

    async def update(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        async with self._lock:
            current = self._objects.get((obj.kind, obj.meta.name))
            if current is None:
                raise not_found(obj.kind, obj.meta.name)
            if current.meta.resource_version != obj.meta.resource_version:
                raise stale_version(
                    obj.kind,
                    obj.meta.name,
                    obj.meta.resource_version,
                    current.meta.resource_version,
                )
            now = utcnow()
            stored = stamp_updated(current, obj, self._next(), now)
            self._put("MODIFIED", stored)
            if audit is not None:
                self._audit(audit, stored.meta.resource_version, now)
        await self._notify()
        return stored.model_copy(deep=True)

    async def delete(
        self,
        kind: str,
        name: str,
        *,
        resource_version: int | None = None,
        audit: AuditEntry | None = None,
    ) -> AnyResource:
        async with self._lock:
            current = self._objects.get((kind, name))
            if current is None:
                raise not_found(kind, name)
            if resource_version is not None and current.meta.resource_version != resource_version:
                raise stale_version(kind, name, resource_version, current.meta.resource_version)
            rev = self._next()
            del self._objects[(kind, name)]
            self._record("DELETED", rev, current)
            if audit is not None:
                self._audit(audit, rev, utcnow())
        await self._notify()
        return current.model_copy(deep=True)

    async def append_audit(self, entry: AuditEntry) -> AuditRecord:
        async with self._lock:
            record = self._audit(entry, 0, utcnow())
        await self._notify()
        return record.model_copy(deep=True)

    async def revision(self) -> int:
        return self._revision

    async def watch(
        self,
        kind: str | None = None,
        *,
        since: int = 0,
        selector: Selector | str | dict[str, str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        sel = as_selector(selector)
        last = since
        while not self._closed:
            if self._events and last < self._events[0].revision - 1:
                raise Gone(
                    f"watch from revision {since} is too old: history starts at "
                    f"{self._events[0].revision}; list again and watch from the current revision"
                )
            pending = self._events_after(last)
            for event in pending:
                last = event.revision
                if kind is not None and event.kind != kind:
                    continue
                if sel is not None and not sel.matches(event.object.get("meta", {}).get("labels", {})):
                    continue
                yield event
            async with self._changed:
                if not self._events_after(last) and not self._closed:
                    await self._changed.wait()

    async def close(self) -> None:
        self._closed = True
        await self._notify()

    def _events_after(self, revision: int) -> Sequence[WatchEvent]:
        """Events newer than `revision` (the list is in revision order, so a bisect finds them)."""
        return self._events[bisect.bisect_right(self._events, revision, key=lambda e: e.revision) :]

    # -- internals (called with the lock held) --------------------------------------------------

    def _next(self) -> int:
        self._revision += 1
        return self._revision

    def _put(self, event_type: str, obj: AnyResource) -> None:
        self._objects[(obj.kind, obj.meta.name)] = obj
        self._record(event_type, obj.meta.resource_version, obj)

    def _record(self, event_type: str, revision: int, obj: AnyResource) -> None:
        self._events.append(
            WatchEvent.model_validate(
                {
                    "type": event_type,
                    "revision": revision,
                    "kind": obj.kind,
                    "name": obj.meta.name,
                    "object": obj.to_document(),
                }
            )
        )
        if len(self._events) > self._retention:
            del self._events[: len(self._events) - self._retention]

    def _audit(self, entry: AuditEntry, target_version: int, now: datetime) -> AuditRecord:
        self._audit_seq += 1
        rev = self._next()
        record = chain_record(
            entry,
            seq=self._audit_seq,
            prev_hash=self._audit_head,
            revision=rev,
            target_version=target_version,
            now=now,
        )
        self._audit_head = record.spec.hash
        self._put("ADDED", record)
        return record

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
