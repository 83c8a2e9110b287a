"""The prepare-time check of a party's own PSI input (`controllers.inputs.input_problem`).

A memory store with real resources: the data must exist here, have the key columns, and be readable
by this domain under the same grant rules DataMesh enforces at read time -- checked without spending a
use, so a task that then runs still has the use it was granted.
"""

from __future__ import annotations

import json
from datetime import timedelta

from accord.controllers.inputs import input_problem
from accord.resources.data import (
    DataColumn,
    DomainData,
    DomainDataGrant,
    DomainDataGrantSpec,
    DomainDataSpec,
    GrantLimit,
)
from accord.resources.job import Party, Task, TaskSpec
from accord.resources.meta import ObjectMeta, utcnow
from accord.store.memory import MemoryStore


def task(data: str = "table", keys: list[str] | None = None) -> Task:
    config = {"inputs": {"alice": {"data": data, "keys": keys or ["id"]}, "bob": {"data": "x"}}}
    return Task(
        meta=ObjectMeta(name="job-1-psi"),
        spec=TaskSpec(
            job="job-1",
            alias="psi",
            initiator="bob",
            app_image="psi",
            parties=[Party(domain="alice"), Party(domain="bob")],
            input_config=json.dumps(config),
        ),
    )


def table(owner: str = "") -> DomainData:
    return DomainData(
        meta=ObjectMeta(name="table", domain=owner),
        spec=DomainDataSpec(
            relative_uri="table.csv",
            author=owner or "alice",
            columns=[DataColumn(name="id", type="str"), DataColumn(name="age", type="int")],
        ),
    )


def grant(name: str = "g1", **limit: object) -> DomainDataGrant:
    return DomainDataGrant(
        meta=ObjectMeta(name=name),
        spec=DomainDataGrantSpec(
            author="carol", domaindata_id="table", grant_domain="alice", limit=GrantLimit(**limit)
        ),
    )


async def test_own_data_with_its_key_columns_is_usable() -> None:
    store = MemoryStore()
    await store.create(table())
    assert await input_problem(store, task(), "alice") == ""


async def test_missing_data_and_missing_key_column_name_the_party() -> None:
    store = MemoryStore()
    assert "party alice: DomainData 'nope' not found on alice" in await input_problem(
        store, task(data="nope"), "alice"
    )
    await store.create(table())
    problem = await input_problem(store, task(keys=["uid"]), "alice")
    assert problem == "party alice: key column 'uid' is not a column of DomainData 'table' (columns: id, age)"


async def test_data_owned_by_another_domain_needs_a_live_grant_checked_without_spending_it() -> None:
    store = MemoryStore()
    await store.create(table(owner="carol"))
    problem = await input_problem(store, task(), "alice")
    assert problem.startswith(
        "party alice: domain 'alice' has no grant for DomainData 'table' owned by 'carol'"
    )
    await store.create(grant(use_count=1))
    assert await input_problem(store, task(), "alice") == ""
    assert await input_problem(store, task(), "alice") == ""  # nothing spent: the engine's read still may
    stored = await store.get("DomainDataGrant", "g1")
    assert isinstance(stored, DomainDataGrant) and stored.status.uses == 0


async def test_an_expired_or_revoked_grant_fails_the_prepare_with_the_reason() -> None:
    store = MemoryStore()
    await store.create(table(owner="carol"))
    await store.create(grant(expiration_time=utcnow() - timedelta(minutes=1)))
    problem = await input_problem(store, task(), "alice")
    assert problem.startswith("party alice: domain 'alice' may not read DomainData 'table': grant 'g1': ")
    assert "expired" in problem
    await store.delete("DomainDataGrant", "g1")  # revoked
    assert "has no grant" in await input_problem(store, task(), "alice")
