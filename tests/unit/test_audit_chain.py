"""verify_chain finds each kind of tampering at the right seq: edited, re-hashed, deleted, truncated.

Tampering goes through the store's own update/delete (what a compromised process could do) and through
raw SQL on the database file (what someone with the disk could do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from accord.audit import ChainReport, verify_chain
from accord.resources.audit import GENESIS_HASH, AuditEntry, AuditRecord, audit_name, spec_hash
from accord.resources.domain import Domain
from accord.store.base import Store
from accord.store.memory import MemoryStore
from accord.store.sql import SqlStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else SqlStore(f"sqlite:///{tmp_path}/a.db")
    for i in range(1, 11):
        if i % 2:
            await opened.append_audit(AuditEntry(actor="user", action="data.read", details={"i": i}))
        else:
            await opened.create(
                Domain.model_validate({"meta": {"name": f"d{i}"}}),
                audit=AuditEntry(actor="user", action="create", target_kind="Domain", target_name=f"d{i}"),
            )
    yield opened
    await opened.close()


async def record(store: Store, seq: int) -> AuditRecord:
    found = await store.get("AuditRecord", audit_name(seq))
    assert isinstance(found, AuditRecord)
    return found


def assert_broken(report: ChainReport, seq: int, reason: str) -> None:
    assert not report.ok
    assert report.first_broken_seq == seq, report
    assert report.reason == reason


async def test_an_untouched_chain_verifies(store: Store) -> None:
    report = await verify_chain(store)
    assert report.ok and report.records == 10 and report.first_broken_seq is None
    assert report.head == (await record(store, 10)).spec.hash
    assert (await verify_chain(store, expected_head=(await record(store, 4)).spec.hash)).ok


async def test_an_empty_chain_verifies_with_the_genesis_head() -> None:
    report = await verify_chain(MemoryStore())
    assert report == ChainReport(ok=True, records=0, head=GENESIS_HASH)


async def test_edited_details_are_a_hash_mismatch_at_that_record(store: Store) -> None:
    seventh = await record(store, 7)
    seventh.spec.details["i"] = 700
    await store.update(seventh)
    assert_broken(await verify_chain(store), 7, "record 7: hash mismatch (content changed)")


async def test_a_rehashed_record_breaks_the_next_link(store: Store) -> None:
    seventh = await record(store, 7)
    seventh.spec.actor = "someone-else"
    seventh.spec.hash = spec_hash(seventh.spec)  # consistent on its own...
    await store.update(seventh)
    # ...but record 8 still points at the original
    assert_broken(await verify_chain(store), 8, "record 8: prev_hash does not match record 7")


async def test_a_rechained_first_record_breaks_its_own_link(store: Store) -> None:
    first = await record(store, 1)
    first.spec.prev_hash = "f" * 64
    first.spec.hash = spec_hash(first.spec)
    await store.update(first)
    assert_broken(await verify_chain(store), 1, "record 1: prev_hash does not match the genesis hash")


async def test_a_deleted_record_is_missing(store: Store) -> None:
    await store.delete("AuditRecord", audit_name(5))
    assert_broken(await verify_chain(store), 5, "missing record 5")
    await store.delete("AuditRecord", audit_name(6))
    assert_broken(await verify_chain(store), 5, "missing records 5..6")


async def test_a_truncated_tail_is_found_through_an_earlier_head(store: Store) -> None:
    announced = (await record(store, 10)).spec.hash
    await store.delete("AuditRecord", audit_name(10))
    assert (await verify_chain(store)).ok  # internally consistent...
    report = await verify_chain(store, expected_head=announced)
    assert not report.ok and report.first_broken_seq == 10
    assert "is not in the chain of 9 records" in report.reason


async def test_raw_sql_edit_of_a_record_is_detected(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/raw.db")
    try:
        for i in range(1, 9):
            await store.append_audit(AuditEntry(actor="user", action="data.read", details={"rows": i}))
        engine = sa.create_engine(f"sqlite:///{tmp_path}/raw.db")
        with engine.begin() as conn:
            changed = conn.execute(
                sa.text(
                    "UPDATE accord_objects SET doc = json_set(doc, '$.spec.details.rows', 0) WHERE name = :n"
                ),
                {"n": audit_name(6)},
            ).rowcount
        engine.dispose()
        assert changed == 1
        assert_broken(await verify_chain(store), 6, "record 6: hash mismatch (content changed)")
    finally:
        await store.close()


async def test_raw_sql_delete_of_a_record_is_detected(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/raw.db")
    try:
        for i in range(1, 9):
            await store.append_audit(AuditEntry(actor="user", action="data.read", details={"rows": i}))
        engine = sa.create_engine(f"sqlite:///{tmp_path}/raw.db")
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM accord_objects WHERE name = :n"), {"n": audit_name(3)})
        engine.dispose()
        assert_broken(await verify_chain(store), 3, "missing record 3")
        # the chain keeps growing from the stored head, so the gap stays visible
        newest = await store.append_audit(AuditEntry(actor="user", action="after"))
        assert newest.spec.seq == 9
        assert_broken(await verify_chain(store), 3, "missing record 3")
    finally:
        await store.close()
