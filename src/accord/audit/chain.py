"""Verify a store's audit chain: every record's hash, every `prev_hash` link, and seq continuity.

The store appends records (`accord.store.common.chain_record`); this module only reads.  A record's
hash covers its content and its predecessor's hash, so:

- a record whose content was edited no longer matches its own hash ("hash mismatch");
- a record rewritten *with* a recomputed hash breaks the link from its successor ("prev_hash does not
  match record N-1"), or its own link if it was re-chained onto something else;
- a deleted record leaves a gap in the seq numbers ("missing record N").

Deleting the newest records leaves a shorter chain that is internally valid.  That is why peers exchange
chain heads (DESIGN.md section 6): `verify_chain(store, expected_head=h)` also checks that a head seen
earlier is still part of the chain.  Verification stops at the first problem and names its seq, because
everything after a broken link is unverifiable by construction.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from accord.resources.audit import GENESIS_HASH, AuditRecord, spec_hash
from accord.store.base import Store


class ChainReport(BaseModel):
    """The outcome of one verification; `reason` says what is wrong, at which seq."""

    ok: bool
    records: int = Field(description="records found in the store")
    head: str = Field(description="hash of the newest record (the genesis hash for an empty chain)")
    first_broken_seq: int | None = None
    reason: str = ""


async def verify_chain(store: Store, *, expected_head: str | None = None) -> ChainReport:
    """Check the whole chain in `store`; `expected_head` is a head hash announced earlier (optional)."""
    found = await store.list(AuditRecord.KIND)
    records = [r for r in found if isinstance(r, AuditRecord)]
    records.sort(key=lambda r: r.spec.seq)
    head = records[-1].spec.hash if records else GENESIS_HASH

    def broken(seq: int, reason: str) -> ChainReport:
        return ChainReport(ok=False, records=len(records), head=head, first_broken_seq=seq, reason=reason)

    prev_hash = GENESIS_HASH
    expected_seq = 1
    hashes: set[str] = {GENESIS_HASH}
    for record in records:
        spec = record.spec
        if spec.seq > expected_seq:
            missing = (
                f"record {expected_seq}"
                if spec.seq == expected_seq + 1
                else f"records {expected_seq}..{spec.seq - 1}"
            )
            return broken(expected_seq, f"missing {missing}")
        if spec.seq < expected_seq:
            return broken(spec.seq, f"record {spec.seq}: appears twice ({record.meta.name})")
        if spec_hash(spec) != spec.hash:
            return broken(spec.seq, f"record {spec.seq}: hash mismatch (content changed)")
        if spec.prev_hash != prev_hash:
            before = "the genesis hash" if spec.seq == 1 else f"record {spec.seq - 1}"
            return broken(spec.seq, f"record {spec.seq}: prev_hash does not match {before}")
        prev_hash = spec.hash
        hashes.add(spec.hash)
        expected_seq += 1
    if expected_head is not None and expected_head not in hashes:
        return broken(
            expected_seq,
            f"head {expected_head[:16]}... seen earlier is not in the chain of {len(records)} records "
            f"(newer records were removed or the history was rewritten)",
        )
    return ChainReport(ok=True, records=len(records), head=head)
