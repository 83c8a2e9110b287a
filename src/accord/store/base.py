"""The Store protocol: what every persistence backend guarantees to the rest of Accord.

A node keeps everything it knows in its store and drives everything it does from it, so the store's
contract is what makes a crashed node carry on (DESIGN.md section 1).  The guarantees, each checked by
the shared contract suite in `tests/contract/test_store_contract.py` against every implementation:

- **Revisions.** One global, strictly increasing revision counter per store.  Every write (create,
  update, delete) takes the next revision and stamps it on the object as `meta.resource_version`.
- **Compare-and-swap.** `update` (and `delete` when given a version) succeeds only if the caller's
  `meta.resource_version` equals the stored one; otherwise `Conflict` (code 11109) and nothing changes.
- **Durability.** When a write returns, it is committed; a process killed afterwards finds it.
- **Audit in the same transaction.** A write given an `AuditEntry` appends the chained AuditRecord in
  the same transaction, so an acknowledged write always has its record and the chain never has a gap.
- **Watch.** `watch(kind, since=rev)` yields every change with revision > `rev` in order, then follows
  new changes; history older than the retained window raises `Gone` (the caller relists).
- **Identity.** `create` assigns `uid`, `generation=1` and timestamps; `update` increments
  `generation` when the spec changes; callers cannot forge these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from accord.resources.audit import AuditEntry, AuditRecord
from accord.resources.meta import AnyResource, Selector
from accord.resources.registry import parse_resource

R = TypeVar("R", bound=AnyResource)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class WatchEvent(BaseModel):
    """One change: the object as it was after the change (for DELETED: as it was when deleted)."""

    type: EventType
    revision: int
    kind: str
    name: str
    object: dict[str, Any]

    def resource(self) -> AnyResource:
        return parse_resource(self.object)


@runtime_checkable
class Store(Protocol):
    """Async persistence of resources; see the module docstring for the guarantees."""

    async def get(self, kind: str, name: str) -> AnyResource:
        """The object, or `NotFound` with the kind's code."""
        ...

    async def list(
        self,
        kind: str,
        *,
        selector: Selector | str | dict[str, str] | None = None,
        domain: str | None = None,
    ) -> list[AnyResource]:
        """Objects of a kind, sorted by name, filtered by label selector and owning domain."""
        ...

    async def create(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        """Insert a new object; `AlreadyExists` if the name is taken."""
        ...

    async def update(self, obj: R, *, audit: AuditEntry | None = None) -> R:
        """Replace spec/status/labels/annotations if `obj.meta.resource_version` is current."""
        ...

    async def delete(
        self,
        kind: str,
        name: str,
        *,
        resource_version: int | None = None,
        audit: AuditEntry | None = None,
    ) -> AnyResource:
        """Remove an object (CAS when a version is given); returns it as it was."""
        ...

    async def append_audit(self, entry: AuditEntry) -> AuditRecord:
        """Append a chained record on its own (actions that change no object, e.g. data reads)."""
        ...

    async def revision(self) -> int:
        """The store's current revision (0 when empty)."""
        ...

    def watch(
        self,
        kind: str | None = None,
        *,
        since: int = 0,
        selector: Selector | str | dict[str, str] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Changes after `since`, in revision order, then live; runs until the consumer stops."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...
