"""The enforced read decision: owner reads, grant reads (counted, audited), and every way a grant fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from accord.datamesh.grants import Decision, authorize_read
from accord.errors import ErrorCode, InvalidArgument, PermissionDenied
from accord.resources.audit import AuditRecord
from accord.resources.data import (
    DataColumn,
    DomainData,
    DomainDataGrant,
    DomainDataGrantSpec,
    DomainDataSpec,
    GrantLimit,
)
from accord.resources.job import Job, JobSpec, JobTask, Party
from accord.resources.meta import ObjectMeta, utcnow
from accord.store.base import Store
from accord.store.factory import open_store
from accord.store.memory import MemoryStore

DATA = "alice-table"


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The rules hold on every store: the memory one and a real SQL one with real CAS."""
    s = MemoryStore() if request.param == "memory" else open_store(f"sqlite:///{tmp_path / 'grants.db'}")
    await s.create(
        DomainData(
            meta=ObjectMeta(name=DATA, domain="alice"),
            spec=DomainDataSpec(
                relative_uri="alice-table.csv",
                author="alice",
                columns=[DataColumn(name=n) for n in ("id", "age", "salary")],
            ),
        )
    )
    try:
        yield s
    finally:
        await s.close()


async def _grant(
    store: Store,
    name: str = "g1",
    *,
    columns: list[str] | None = None,
    author: str = "alice",
    **limit: object,
) -> DomainDataGrant:
    grant = DomainDataGrant(
        meta=ObjectMeta(name=name, domain="alice"),
        spec=DomainDataGrantSpec(
            author=author,
            domaindata_id=DATA,
            grant_domain="bob",
            columns=columns or [],
            limit=GrantLimit.model_validate(limit),
        ),
    )
    return await store.create(grant)


async def _reads(store: Store) -> list[AuditRecord]:
    return [
        r
        for r in await store.list("AuditRecord")
        if isinstance(r, AuditRecord) and r.spec.action == "data.read"
    ]


async def _read(store: Store, **kwargs: object) -> Decision:
    args: dict[str, object] = {"domain_data": DATA, "requester_domain": "bob", "task": "t1", "job": "j1"}
    args.update(kwargs)
    return await authorize_read(store, **args)  # type: ignore[arg-type]


async def test_owner_reads_its_own_data_and_is_audited(store: Store) -> None:
    decision = await authorize_read(
        store, domain_data=DATA, requester_domain="alice", task="t1", job="j1", columns=["id"]
    )
    assert decision.owner and decision.grant is None and decision.columns == ["id"]
    [record] = await _reads(store)
    assert record.spec.actor == "task/t1" and record.spec.target_name == DATA
    assert record.spec.details == {
        "data": DATA,
        "task": "t1",
        "job": "j1",
        "domain": "alice",
        "columns": ["id"],
        "grant": None,
    }


async def test_grant_read_spends_a_use_and_records_it(store: Store) -> None:
    await _grant(store, use_count=3)
    decision = await authorize_read(
        store, domain_data=DATA, requester_domain="bob", task="t1", job="j1", app="psi", columns=["id"]
    )
    assert not decision.owner and decision.grant == "g1" and decision.uses_left == 2
    grant = await store.get("DomainDataGrant", "g1")
    assert isinstance(grant, DomainDataGrant)
    assert grant.status.uses == 1
    [use] = grant.status.use_records
    assert (use.grant_domain, use.task, use.component) == ("bob", "t1", "psi")
    [record] = await _reads(store)
    assert record.spec.details["grant"] == "g1" and record.spec.details["columns"] == ["id"]
    assert record.spec.details["uses_left"] == 2


async def test_exhausted_grant_is_denied_with_its_name(store: Store) -> None:
    await _grant(store, use_count=1)
    await _read(store)
    with pytest.raises(PermissionDenied) as err:
        await _read(store)
    assert err.value.code == ErrorCode.GRANT_DENIED
    assert "grant 'g1'" in err.value.message and "exhausted: 1 of 1" in err.value.message
    assert len(await _reads(store)) == 1


async def test_expired_grant_is_denied(store: Store) -> None:
    await _grant(store, expiration_time=utcnow() - timedelta(seconds=1))
    with pytest.raises(PermissionDenied, match="'g1': it expired at") as err:
        await _read(store)
    assert err.value.code == ErrorCode.GRANT_DENIED
    await _grant(store, "g2", expiration_time=utcnow() + timedelta(hours=1))
    assert (await authorize_read(store, domain_data=DATA, requester_domain="bob")).grant == "g2"


async def test_revoked_grant_is_denied(store: Store) -> None:
    await _grant(store)
    await _read(store, grant="g1")
    await store.delete("DomainDataGrant", "g1")
    with pytest.raises(PermissionDenied, match="grant 'g1' for DomainData 'alice-table' was revoked") as err:
        await _read(store, grant="g1")
    assert err.value.code == ErrorCode.GRANT_DENIED
    with pytest.raises(PermissionDenied, match="has no grant"):
        await _read(store)
    grant = await _grant(store, "g3")
    grant.status.phase = "Unavailable"
    grant.status.message = "revoked by alice"
    await store.update(grant)
    with pytest.raises(PermissionDenied, match="revoked by alice"):
        await _read(store)


async def test_columns_outside_the_grant_are_denied(store: Store) -> None:
    await _grant(store, columns=["id", "age"])
    assert (await _read(store, columns=["age", "id"])).grant == "g1"
    with pytest.raises(PermissionDenied, match=r"columns \['salary'\] are outside the grant"):
        await _read(store, columns=["id", "salary"])
    with pytest.raises(PermissionDenied, match=r"columns \['salary'\] are outside"):
        await _read(store)  # no columns named = every column of the data
    with pytest.raises(InvalidArgument, match="has no column 'nope'") as err:
        await _read(store, columns=["nope"])
    assert err.value.code == ErrorCode.DATA_INVALID


async def test_app_initiator_flow_and_author_must_match(store: Store) -> None:
    await _grant(store, components=["psi"], initiator="carol", flow_id="flow-7")
    await store.create(
        Job(
            meta=ObjectMeta(name="j1"),
            spec=JobSpec(
                initiator="carol",
                flow_id="flow-7",
                tasks=[JobTask(alias="a", app_image="psi", parties=[Party(domain="bob")])],
            ),
        )
    )
    with pytest.raises(PermissionDenied, match="not for app 'lr'"):
        await _read(store, app="lr")
    assert (await _read(store, app="psi")).grant == "g1"  # job looked up
    with pytest.raises(PermissionDenied, match="initiated by 'carol', not by 'dave'"):
        await _read(store, app="psi", initiator="dave")
    with pytest.raises(PermissionDenied, match="flow 'flow-7'"):
        await _read(store, app="psi", job="other", initiator="carol", flow_id="flow-8")
    await store.delete("DomainDataGrant", "g1")
    await _grant(store, author="mallory")
    with pytest.raises(PermissionDenied, match="authored by 'mallory'"):
        await _read(store)


async def test_check_without_consuming(store: Store) -> None:
    await _grant(store, use_count=1)
    decision = await _read(store, consume=False)
    assert decision.uses_left == 1
    grant = await store.get("DomainDataGrant", "g1")
    assert isinstance(grant, DomainDataGrant) and grant.status.uses == 0
    assert await _reads(store) == []


async def test_concurrent_reads_spend_each_use_exactly_once(store: Store) -> None:
    uses, readers = 5, 20
    await _grant(store, use_count=uses)
    results = await asyncio.gather(
        *(_read(store, task=f"t{i}") for i in range(readers)), return_exceptions=True
    )
    allowed = [r for r in results if not isinstance(r, BaseException)]
    denied = [r for r in results if isinstance(r, PermissionDenied)]
    assert len(allowed) == uses and len(denied) == readers - uses
    grant = await store.get("DomainDataGrant", "g1")
    assert isinstance(grant, DomainDataGrant)
    assert grant.status.uses == uses and len(grant.status.use_records) == uses
    assert len({u.task for u in grant.status.use_records}) == uses
    assert sorted(d.uses_left for d in allowed) == list(range(uses))
    assert len(await _reads(store)) == uses
