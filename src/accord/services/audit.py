"""AuditService: checking the node's hash-chained audit log, and reading the records about one object.

Verification itself lives in `accord.audit.chain` because the node also runs it when peers exchange
chain heads; this service is only the use case the API and CLI call.
"""

from __future__ import annotations

from accord.audit.chain import ChainReport, verify_chain
from accord.resources.audit import AuditRecord
from accord.store.base import Store


class AuditService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def verify(self, *, expected_head: str | None = None) -> ChainReport:
        """`ChainReport{ok, records, head, first_broken_seq, reason}` for the whole chain."""
        return await verify_chain(self._store, expected_head=expected_head)

    async def records_about(self, kind: str, name: str, *, limit: int = 20) -> list[AuditRecord]:
        """The newest `limit` audit records whose target is `kind`/`name`, oldest first."""
        records = [
            r
            for r in await self._store.list("AuditRecord")
            if isinstance(r, AuditRecord) and r.spec.target_kind == kind and r.spec.target_name == name
        ]
        records.sort(key=lambda r: r.spec.seq)
        return records[-limit:] if limit > 0 else records
