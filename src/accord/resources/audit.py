"""AuditRecord and the hash that chains records (pure; the store appends, `accord.audit` verifies).

Each record's `hash` is SHA-256 over a canonical JSON of its content *and the previous record's hash*,
so changing, inserting or deleting any record breaks every later link.  Records are named by their
sequence number (`audit-000000000042`), and the store creates them inside the same transaction as the
write they describe, so an acknowledged write always has its record and the chain has no gaps.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from accord.resources.meta import Model, Resource

GENESIS_HASH = "0" * 64


def audit_name(seq: int) -> str:
    return f"audit-{seq:012d}"


class AuditEntry(Model):
    """What a caller asks to record; the store turns it into a chained AuditRecord."""

    actor: str = Field(description="who acted: 'user', 'controller/job', 'peer/bob', ...")
    action: str = Field(description="verb: create, update, delete, phase, approve, data.read ...")
    target_kind: str = ""
    target_name: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class AuditRecordSpec(Model):
    seq: int = Field(ge=1)
    time: datetime
    actor: str
    action: str
    target_kind: str = ""
    target_name: str = ""
    target_version: int = 0
    details: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str


class AuditRecordStatus(Model):
    pass


class AuditRecord(Resource[AuditRecordSpec, AuditRecordStatus]):
    KIND = "AuditRecord"
    kind: Literal["AuditRecord"] = "AuditRecord"
    status: AuditRecordStatus = Field(default_factory=AuditRecordStatus)


def record_hash(
    *,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    target_kind: str,
    target_name: str,
    target_version: int,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "time": time.isoformat(),
        "actor": actor,
        "action": action,
        "target_kind": target_kind,
        "target_name": target_name,
        "target_version": target_version,
        "details": details,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_hash(spec: AuditRecordSpec) -> str:
    """Recompute the hash a record's content should have (used by verification)."""
    return record_hash(
        seq=spec.seq,
        time=spec.time,
        actor=spec.actor,
        action=spec.action,
        target_kind=spec.target_kind,
        target_name=spec.target_name,
        target_version=spec.target_version,
        details=spec.details,
        prev_hash=spec.prev_hash,
    )
