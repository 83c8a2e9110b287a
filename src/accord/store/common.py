"""Pieces every Store implementation shares: stamping meta, chaining audit records, filtering.

Kept here so the memory and SQL stores cannot drift apart on what a write means.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, TypeVar

from accord.resources.audit import AuditEntry, AuditRecord, AuditRecordSpec, audit_name, record_hash
from accord.resources.meta import AnyResource, ObjectMeta, Selector

R = TypeVar("R", bound=AnyResource)

# How many change events a store keeps for `watch(since=...)` before compacting.
DEFAULT_EVENT_RETENTION = 100_000


def as_selector(selector: Selector | str | dict[str, str] | None) -> Selector | None:
    if selector is None or isinstance(selector, Selector):
        return selector
    return Selector.parse(selector)


def matches(obj: AnyResource, selector: Selector | None, domain: str | None) -> bool:
    if domain is not None and obj.meta.domain != domain:
        return False
    return selector is None or selector.matches(obj.meta.labels)


def stamp_created(obj: R, revision: int, now: datetime) -> R:
    """A deep copy of `obj` as the store will hold it after create (shares nothing with the caller's)."""
    meta = obj.meta.model_copy(
        update={
            "uid": obj.meta.uid or str(uuid.uuid4()),
            "resource_version": revision,
            "generation": 1,
            "created_at": now,
            "updated_at": now,
        },
        deep=True,
    )
    return obj.model_copy(update={"meta": meta}, deep=True)


def stamp_updated(current: AnyResource, obj: R, revision: int, now: datetime) -> R:
    """A deep copy of `obj` as the store will hold it after update (identity fields from `current`)."""
    spec_changed = current.spec.model_dump(mode="json") != obj.spec.model_dump(mode="json")
    meta = ObjectMeta(
        name=current.meta.name,
        domain=obj.meta.domain,
        uid=current.meta.uid,
        resource_version=revision,
        generation=current.meta.generation + (1 if spec_changed else 0),
        labels=dict(obj.meta.labels),
        annotations=dict(obj.meta.annotations),
        created_at=current.meta.created_at,
        updated_at=now,
    )
    return obj.model_copy(update={"meta": meta}, deep=True)


def normalise_details(details: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip, so the hash computed now equals the hash recomputed from storage."""
    result: dict[str, Any] = json.loads(json.dumps(details, default=str, sort_keys=True))
    return result


def chain_record(
    entry: AuditEntry,
    *,
    seq: int,
    prev_hash: str,
    revision: int,
    target_version: int,
    now: datetime,
) -> AuditRecord:
    """Build the AuditRecord that follows `prev_hash` (stored at `revision`)."""
    details = normalise_details(entry.details)
    digest = record_hash(
        seq=seq,
        time=now,
        actor=entry.actor,
        action=entry.action,
        target_kind=entry.target_kind,
        target_name=entry.target_name,
        target_version=target_version,
        details=details,
        prev_hash=prev_hash,
    )
    return AuditRecord(
        meta=ObjectMeta(
            name=audit_name(seq),
            uid=str(uuid.uuid4()),
            resource_version=revision,
            generation=1,
            created_at=now,
            updated_at=now,
        ),
        spec=AuditRecordSpec(
            seq=seq,
            time=now,
            actor=entry.actor,
            action=entry.action,
            target_kind=entry.target_kind,
            target_name=entry.target_name,
            target_version=target_version,
            details=details,
            prev_hash=prev_hash,
            hash=digest,
        ),
    )
