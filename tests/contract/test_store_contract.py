"""The Store contract (accord.store.base), checked against every backend: memory, SQLite, PostgreSQL.

One parametrised `store_url` fixture runs each test on each backend, the way Flower's `StateTest` runs one
suite on each LinkState.  Tests that need a second store on the *same* data (durability, two processes
or replicas) use `open_store(store_url)` again and skip the memory backend, whose data lives in one
object.  Every watch is bounded by a timeout; PostgreSQL tests get a fresh database each.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from accord.audit import verify_chain
from accord.errors import (
    AlreadyExists,
    Conflict,
    ErrorCode,
    Gone,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from accord.resources.appimage import AppImage, AppImageSpec
from accord.resources.audit import AuditEntry, AuditRecord
from accord.resources.domain import Domain, DomainRoute, DomainRouteSpec, DomainSpec
from accord.resources.job import Job
from accord.resources.meta import ObjectMeta
from accord.store.base import Store, WatchEvent
from accord.store.factory import open_store
from accord.store.memory import MemoryStore
from accord.store.pgserver import PostgresServer, free_port
from accord.store.sql import SqlStore

WAIT = 15.0  # upper bound for anything a test waits for
POLL = 0.05  # watch poll interval of the stores under test

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def durable_url(store_url: str) -> str:
    if store_url.startswith("memory"):
        pytest.skip("the memory store keeps nothing beyond its own object")
    return store_url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url, poll_interval=POLL)
    yield opened
    await opened.close()


def domain(name: str, *, labels: dict[str, str] | None = None, owner: str = "") -> Domain:
    return Domain(meta=ObjectMeta(name=name, domain=owner, labels=labels or {}), spec=DomainSpec())


def route(name: str) -> DomainRoute:
    return DomainRoute(meta=ObjectMeta(name=name), spec=DomainRouteSpec(source="alice", destination="bob"))


def image(name: str) -> AppImage:
    return AppImage(meta=ObjectMeta(name=name), spec=AppImageSpec(command=["python", "-m", "x"]))


def job(name: str) -> Job:
    return Job.model_validate(
        {
            "meta": {"name": name, "labels": {"team": "risk"}},
            "spec": {
                "initiator": "alice",
                "max_parallelism": 2,
                "tasks": [
                    {"alias": "psi", "app_image": "psi", "parties": [{"domain": "alice"}, {"domain": "bob"}]},
                    {
                        "alias": "lr",
                        "app_image": "ss-lr",
                        "dependencies": ["psi"],
                        "parties": [{"domain": "alice", "role": "host"}, {"domain": "bob"}],
                        "input_config": '{"epochs": 3}',
                    },
                ],
            },
        }
    )


def entry(action: str = "create", target: str = "") -> AuditEntry:
    return AuditEntry(actor="user", action=action, target_kind="Domain", target_name=target, details={"n": 1})


async def collect(events: AsyncIterator[WatchEvent], count: int, *, keep: bool = False) -> list[WatchEvent]:
    """The next `count` events (fail after WAIT seconds); closes the watch unless `keep`."""
    found: list[WatchEvent] = []
    try:
        async with asyncio.timeout(WAIT):
            async for event in events:
                found.append(event)
                if len(found) == count:
                    break
    finally:
        if not keep:
            await events.aclose()  # type: ignore[attr-defined]
    return found


async def audit_records(store: Store) -> list[AuditRecord]:
    return [r for r in await store.list("AuditRecord") if isinstance(r, AuditRecord)]


# -- create / get / list -------------------------------------------------------------------------


async def test_create_stamps_identity_and_get_returns_it(store: Store) -> None:
    forged = domain("alice").model_copy(
        update={"meta": ObjectMeta(name="alice", uid="", resource_version=99, generation=7)}
    )
    created = await store.create(forged)
    assert created.meta.uid
    assert created.meta.generation == 1
    assert created.meta.resource_version == await store.revision()
    assert created.meta.created_at is not None and created.meta.created_at == created.meta.updated_at
    fetched = await store.get("Domain", "alice")
    assert fetched == created


async def test_documents_round_trip_unchanged(store: Store) -> None:
    created = await store.create(job("job-1"))
    fetched = await store.get("Job", "job-1")
    assert isinstance(fetched, Job)
    assert fetched.to_document() == created.to_document()
    assert fetched.spec.tasks[1].dependencies == ["psi"]


async def test_returned_objects_are_copies(store: Store) -> None:
    created = await store.create(domain("alice", labels={"a": "1"}))
    created.meta.labels["a"] = "changed"
    fetched = await store.get("Domain", "alice")
    fetched.meta.labels["b"] = "2"
    assert (await store.get("Domain", "alice")).meta.labels == {"a": "1"}


async def test_list_is_sorted_by_name_and_filtered(store: Store) -> None:
    for name, labels, owner in [
        ("zeta", {"tier": "gold", "team": "x"}, "alice"),
        ("a-b", {"tier": "silver"}, "bob"),
        ("ab", {"tier": "gold"}, "alice"),
        ("a0", {}, ""),
    ]:
        await store.create(domain(name, labels=labels, owner=owner))
    await store.create(route("ab"))  # another kind with the same name does not leak into the list

    async def names(**kwargs: Any) -> list[str]:
        return [obj.meta.name for obj in await store.list("Domain", **kwargs)]

    assert await names() == sorted(["zeta", "a-b", "ab", "a0"])
    assert await names(selector="tier=gold") == ["ab", "zeta"]
    assert await names(selector={"tier": "gold", "team": "x"}) == ["zeta"]
    assert await names(selector="tier!=gold") == ["a-b", "a0"]
    assert await names(selector="tier") == ["a-b", "ab", "zeta"]
    assert await names(selector="!tier") == ["a0"]
    assert await names(domain="alice") == ["ab", "zeta"]
    assert await names(domain="alice", selector="team") == ["zeta"]
    assert await names(domain="") == ["a0"]
    assert [r.meta.name for r in await store.list("DomainRoute")] == ["ab"]
    assert await store.list("Job") == []


async def test_invalid_selector_names_the_key(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="'bad key' is not a valid label key"):
        await store.list("Domain", selector="bad key!=x")


@pytest.mark.parametrize(
    ("make", "kind", "exists_code", "missing_code"),
    [
        (domain, "Domain", ErrorCode.DOMAIN_EXISTS, ErrorCode.DOMAIN_NOT_FOUND),
        (route, "DomainRoute", ErrorCode.ROUTE_EXISTS, ErrorCode.ROUTE_NOT_FOUND),
        (image, "AppImage", ErrorCode.APPIMAGE_EXISTS, ErrorCode.APPIMAGE_NOT_FOUND),
        (job, "Job", ErrorCode.JOB_EXISTS, ErrorCode.JOB_NOT_FOUND),
    ],
)
async def test_already_exists_and_not_found_carry_the_kinds_code(
    store: Store, make: Any, kind: str, exists_code: ErrorCode, missing_code: ErrorCode
) -> None:
    await store.create(make("x1"))
    with pytest.raises(AlreadyExists) as exists:
        await store.create(make("x1"))
    assert exists.value.code == exists_code
    assert kind in exists.value.message and "'x1'" in exists.value.message
    with pytest.raises(NotFound) as missing:
        await store.get(kind, "nope")
    assert missing.value.code == missing_code
    assert "'nope'" in missing.value.message


# -- update / delete -----------------------------------------------------------------------------


async def test_update_with_stale_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    first = await store.create(domain("alice", labels={"v": "1"}))
    second = await store.update(
        first.model_copy(update={"meta": first.meta.model_copy(update={"labels": {"v": "2"}})})
    )
    revision = await store.revision()
    stale = first.model_copy(update={"meta": first.meta.model_copy(update={"labels": {"v": "3"}})})
    with pytest.raises(Conflict) as conflict:
        await store.update(stale, audit=entry("update", "alice"))
    assert conflict.value.code == ErrorCode.CONFLICT == 11109
    assert str(first.meta.resource_version) in conflict.value.message
    assert await store.get("Domain", "alice") == second
    assert await store.revision() == revision
    assert await audit_records(store) == []


async def test_update_of_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update(domain("ghost"))


async def test_generation_moves_only_when_the_spec_changes(store: Store) -> None:
    created = await store.create(route("r1"))
    status_only = created.model_copy(deep=True)
    status_only.status.reason = "probing"
    status_only.meta.labels["x"] = "y"
    status_only.meta.uid = "forged"
    after_status = await store.update(status_only)
    assert after_status.meta.generation == 1
    assert after_status.meta.uid == created.meta.uid
    assert after_status.meta.created_at == created.meta.created_at
    assert after_status.meta.resource_version > created.meta.resource_version
    assert after_status.status.reason == "probing"

    spec_change = after_status.model_copy(deep=True)
    spec_change.spec.endpoint = "https://bob:8443"
    after_spec = await store.update(spec_change)
    assert after_spec.meta.generation == 2
    assert (await store.get("DomainRoute", "r1")) == after_spec


async def test_delete_with_and_without_version(store: Store) -> None:
    a = await store.create(domain("alice"))
    await store.create(domain("bob"))
    await store.update(a.model_copy(deep=True))
    with pytest.raises(Conflict):
        await store.delete("Domain", "alice", resource_version=a.meta.resource_version)
    assert (await store.get("Domain", "alice")).meta.name == "alice"

    current = await store.get("Domain", "alice")
    removed = await store.delete("Domain", "alice", resource_version=current.meta.resource_version)
    assert removed == current
    removed_bob = await store.delete("Domain", "bob")
    assert removed_bob.meta.name == "bob"
    assert await store.list("Domain") == []
    with pytest.raises(NotFound) as missing:
        await store.delete("Domain", "alice")
    assert missing.value.code == ErrorCode.DOMAIN_NOT_FOUND
    await store.create(domain("alice"))  # the name is free again


async def test_revision_is_global_and_strictly_increasing(store: Store) -> None:
    assert await store.revision() == 0
    seen = []
    a = await store.create(domain("alice"))
    seen.append(a.meta.resource_version)
    r = await store.create(route("r1"), audit=entry())
    seen.append(r.meta.resource_version)
    seen.append(await store.revision())  # the audit record took the next one
    u = await store.update(a)
    seen.append(u.meta.resource_version)
    await store.delete("DomainRoute", "r1")
    seen.append(await store.revision())
    record = await store.append_audit(entry("data.read"))
    seen.append(record.meta.resource_version)
    assert seen == list(range(1, 7))


# -- watch ----------------------------------------------------------------------------------------


async def test_watch_replays_from_since_then_follows_live_changes(store: Store) -> None:
    await store.create(domain("a"))
    b = await store.create(domain("b"))
    await store.create(domain("c"))
    events = store.watch("Domain", since=b.meta.resource_version - 1)
    replay = await collect(events, 2, keep=True)
    assert [(e.type, e.name) for e in replay] == [("ADDED", "b"), ("ADDED", "c")]
    assert replay[0].resource() == b

    live = asyncio.create_task(collect(events, 2))
    updated = await store.update(b)
    await store.delete("Domain", "a")
    modified, deleted = await live
    assert (modified.type, modified.name, modified.revision) == (
        "MODIFIED",
        "b",
        updated.meta.resource_version,
    )
    assert (deleted.type, deleted.name) == ("DELETED", "a")
    assert deleted.object["meta"]["name"] == "a"
    assert deleted.revision == await store.revision()
    await events.aclose()


async def test_watch_filters_by_kind_and_selector(store: Store) -> None:
    events = store.watch("Domain", selector="tier=gold")
    pending = asyncio.create_task(collect(events, 2))
    await store.create(route("gold"))
    await store.create(domain("plain", labels={"tier": "silver"}))
    await store.create(domain("g1", labels={"tier": "gold"}), audit=entry())
    await store.create(domain("g2", labels={"tier": "gold"}))
    assert [e.name for e in await pending] == ["g1", "g2"]

    everything = await collect(store.watch(), 5)
    assert [e.kind for e in everything] == ["DomainRoute", "Domain", "Domain", "AuditRecord", "Domain"]
    audits = await collect(store.watch("AuditRecord"), 1)
    assert audits[0].type == "ADDED" and audits[0].object["spec"]["target_name"] == ""


async def test_watch_since_the_current_revision_yields_only_new_changes(store: Store) -> None:
    await store.create(domain("old"))
    events = store.watch(since=await store.revision())
    pending = asyncio.create_task(collect(events, 1))
    await store.create(domain("new"))
    assert [e.name for e in await pending] == ["new"]


async def test_watch_ends_when_the_store_closes(store_url: str) -> None:
    opened = open_store(store_url, poll_interval=POLL)
    await opened.create(domain("a"))

    async def drain() -> list[str]:
        return [e.name async for e in opened.watch()]

    task = asyncio.create_task(drain())
    await asyncio.sleep(POLL * 2)
    await opened.close()
    async with asyncio.timeout(WAIT):
        assert await task == ["a"]
    await opened.close()  # idempotent


async def test_gone_after_compaction(store_url: str) -> None:
    if store_url.startswith("memory"):
        small: Store = MemoryStore(event_retention=5)
    else:
        small = SqlStore(store_url, poll_interval=POLL, event_retention=5)
    try:
        for i in range(30):
            await small.create(domain(f"d{i}"))
        head = await small.revision()
        with pytest.raises(Gone) as gone:
            await collect(small.watch(since=0), 1)
        assert gone.value.code == ErrorCode.WATCH_EXPIRED
        assert "list again" in gone.value.message
        recent = await collect(small.watch(since=head - 3), 3)
        assert [e.revision for e in recent] == [head - 2, head - 1, head]
    finally:
        await small.close()


async def test_a_kind_filtered_watcher_is_not_expired_by_other_kinds(store_url: str) -> None:
    """A watcher of a quiet kind keeps up with the revision even when only other kinds change."""
    small: Store = (
        MemoryStore(event_retention=5)
        if store_url.startswith("memory")
        else SqlStore(store_url, poll_interval=POLL, event_retention=5)
    )
    try:
        events = small.watch("Job", since=await small.revision())
        first = asyncio.create_task(collect(events, 1))
        for batch in range(4):  # 8 revisions of other kinds, more than the 5 retained
            await small.create(domain(f"a{batch}"))
            await small.create(domain(f"b{batch}"))
            await asyncio.sleep(POLL * 4)  # a live watcher looks at least once per batch
        await small.create(job("j1"))
        assert [e.name for e in await first] == ["j1"]
    finally:
        await small.close()


# -- audit ----------------------------------------------------------------------------------------


async def test_audit_records_are_written_with_the_change_and_chained(store: Store) -> None:
    a = await store.create(domain("alice"), audit=entry("create", "alice"))
    u = await store.update(a, audit=entry("update", "alice"))
    await store.append_audit(AuditEntry(actor="peer/bob", action="data.read", details={"rows": 10}))
    await store.delete("Domain", "alice", audit=entry("delete", "alice"))
    records = await audit_records(store)
    assert [r.spec.seq for r in records] == [1, 2, 3, 4]
    assert [r.meta.name for r in records] == [f"audit-{i:012d}" for i in (1, 2, 3, 4)]
    assert [r.spec.action for r in records] == ["create", "update", "data.read", "delete"]
    assert records[0].spec.target_version == a.meta.resource_version
    assert records[0].meta.resource_version == a.meta.resource_version + 1
    assert records[1].spec.target_version == u.meta.resource_version
    assert records[2].spec.target_version == 0
    assert records[3].spec.target_version == records[3].meta.resource_version - 1
    assert records[0].spec.prev_hash == "0" * 64
    assert all(later.spec.prev_hash == earlier.spec.hash for earlier, later in itertools.pairwise(records))
    report = await verify_chain(store)
    assert report.ok and report.records == 4 and report.head == records[-1].spec.hash, report


async def test_a_failed_write_leaves_no_audit_record_and_no_revision(store: Store) -> None:
    await store.create(domain("alice"), audit=entry())
    revision = await store.revision()
    with pytest.raises(AlreadyExists):
        await store.create(domain("alice"), audit=entry())
    with pytest.raises(NotFound):
        await store.update(domain("ghost"), audit=entry())
    with pytest.raises(Conflict):
        await store.delete("Domain", "alice", resource_version=1_000, audit=entry())
    with pytest.raises(NotFound):
        await store.delete("Domain", "ghost", audit=entry())
    assert await store.revision() == revision
    assert [r.spec.seq for r in await audit_records(store)] == [1]
    record = await store.append_audit(entry("after"))
    assert record.spec.seq == 2 and record.meta.resource_version == revision + 1
    assert (await verify_chain(store)).ok


# -- concurrency and durability -------------------------------------------------------------------


async def increment(store: Store, name: str, times: int) -> int:
    """CAS-increment the `count` label `times` times, retrying on Conflict; returns the retries."""
    retries = 0
    for _ in range(times):
        while True:
            current = await store.get("Domain", name)
            current.meta.labels["count"] = str(int(current.meta.labels.get("count", "0")) + 1)
            try:
                await store.update(current, audit=entry("increment", name))
                break
            except Conflict:
                retries += 1
    return retries


async def test_concurrent_cas_writers_lose_no_update(store: Store) -> None:
    await store.create(domain("counter"))
    async with asyncio.timeout(120):
        await asyncio.gather(*(increment(store, "counter", 5) for _ in range(20)))
    assert (await store.get("Domain", "counter")).meta.labels["count"] == "100"
    report = await verify_chain(store)
    assert report.ok and report.records == 100, report


async def test_durability_reopen_from_the_same_url(durable_url: str) -> None:
    first = open_store(durable_url, poll_interval=POLL)
    a = await first.create(job("job-1"), audit=entry("create", "job-1"))
    await first.create(domain("bob"))
    await first.delete("Domain", "bob", audit=entry("delete", "bob"))
    revision = await first.revision()
    head = (await verify_chain(first)).head
    await first.close()

    second = open_store(durable_url, poll_interval=POLL)
    try:
        assert await second.get("Job", "job-1") == a
        assert await second.revision() == revision
        assert [e.name for e in await collect(second.watch(since=0), 5)] == [
            "job-1",
            "audit-000000000001",
            "bob",
            "bob",
            "audit-000000000002",
        ]
        b = await second.create(domain("carol"), audit=entry("create", "carol"))
        assert b.meta.resource_version == revision + 1
        report = await verify_chain(second, expected_head=head)
        assert report.ok and report.records == 3, report
    finally:
        await second.close()


async def test_two_stores_on_the_same_data_see_each_others_writes(durable_url: str) -> None:
    """Two processes on one SQLite file, or two replicas on one PostgreSQL database."""
    one = open_store(durable_url, poll_interval=POLL)
    two = open_store(durable_url, poll_interval=POLL)
    try:
        await one.create(domain("counter"))
        watched = asyncio.create_task(collect(two.watch("Domain", since=await two.revision()), 1))
        await asyncio.sleep(POLL)
        await one.create(domain("from-one"))
        assert [e.name for e in await watched] == ["from-one"]

        async with asyncio.timeout(120):
            await asyncio.gather(*(increment(s, "counter", 5) for s in (one, two) for _ in range(4)))
        assert (await two.get("Domain", "counter")).meta.labels["count"] == "40"
        assert (await verify_chain(one)).ok
    finally:
        await one.close()
        await two.close()


WRITER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from accord.resources.audit import AuditEntry
    from accord.resources.domain import Domain
    from accord.store.factory import open_store

    async def main(url: str, count: int) -> None:
        store = open_store(url)
        try:
            for i in range(count):
                await store.create(
                    Domain.model_validate({"meta": {"name": f"proc-{i}"}}),
                    audit=AuditEntry(actor="proc", action="create", target_name=f"proc-{i}"),
                )
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_another_process_writes_the_same_file_concurrently(store_url: str) -> None:
    """BEGIN IMMEDIATE + busy timeout: two processes' writers queue; nothing is lost or duplicated."""
    if not store_url.startswith("sqlite"):
        pytest.skip("multi-process writers on one file are an SQLite concern")
    count = 100
    local = open_store(store_url, poll_interval=POLL)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_PROCESS, store_url, str(count)], env=dict(os.environ)
    )
    try:
        events = local.watch("Domain")
        first = await collect(events, 1, keep=True)  # the other process is writing now
        assert first[0].name == "proc-0"
        rest = asyncio.create_task(collect(events, 2 * count - 1))
        for i in range(count):
            await local.create(domain(f"local-{i}"), audit=entry("create", f"local-{i}"))
        assert await asyncio.wait_for(asyncio.to_thread(writer.wait), WAIT) == 0
        seen = first + await rest
        assert len({e.name for e in seen}) == 2 * count
        assert [e.revision for e in seen] == sorted(e.revision for e in seen)
        assert await local.revision() == 4 * count
        report = await verify_chain(local)
        assert report.ok and report.records == 2 * count, report
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        await local.close()


# -- opening and failing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/x", "unsupported store URL scheme 'mysql'"),
        ("no-scheme", "has no scheme"),
        ("sqlite:///:memory:", "use memory://"),
        ("sqlite://", "needs a file"),
        ("postgresql+asyncpg://u@h/db", "psycopg"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        open_store(url)


def test_open_store_picks_the_backend() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    pg = open_store("postgresql://u:secret@127.0.0.1:1/db")
    assert isinstance(pg, SqlStore) and pg.dialect == "postgresql"
    assert "secret" not in pg.url and "***" in pg.url


def test_store_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="poll_interval"):
        SqlStore(f"sqlite:///{tmp_path / 'x.db'}", poll_interval=0)
    with pytest.raises(InvalidArgument, match="event_retention"):
        SqlStore(f"sqlite:///{tmp_path / 'x.db'}", event_retention=0)


async def test_unreachable_postgres_is_unavailable_and_hides_the_password() -> None:
    store = SqlStore(f"postgresql://accord:s3cret-pw@127.0.0.1:{free_port()}/accord", busy_timeout=2)
    try:
        with pytest.raises(Unavailable) as down:
            await store.get("Domain", "alice")
        assert down.value.retryable and down.value.code == ErrorCode.STORE_UNAVAILABLE
        assert "127.0.0.1" in down.value.message and "get Domain alice" in down.value.message
        assert "s3cret-pw" not in down.value.message
    finally:
        await store.close()


async def test_unwritable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SqlStore(f"sqlite:///{blocker / 'x.db'}")
    try:
        with pytest.raises(Unavailable, match=r"x\.db"):
            await store.create(domain("alice"))
    finally:
        await store.close()


async def test_a_closed_store_refuses_calls(durable_url: str) -> None:
    store = open_store(durable_url)
    await store.close()
    with pytest.raises(Unavailable, match="closed"):
        await store.get("Domain", "alice")


@pytest.mark.postgres
async def test_postgres_outage_is_unavailable_and_the_store_recovers(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = SqlStore(postgres_url, poll_interval=POLL, busy_timeout=3)
    try:
        await store.create(domain("a"))
        events = store.watch("Domain", since=await store.revision())
        after_outage = asyncio.create_task(collect(events, 1))
        postgres_server.halt()
        try:
            with pytest.raises(Unavailable) as down:
                await store.get("Domain", "a")
            assert down.value.retryable and "127.0.0.1" in down.value.message
            with pytest.raises(Unavailable):
                await store.create(domain("b"))
        finally:
            postgres_server.resume()
        assert (await store.get("Domain", "a")).meta.name == "a"
        await store.create(domain("b"))
        assert [e.name for e in await after_outage] == ["b"]  # the watch waited through the outage
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_rejects_a_nul_character_as_invalid_argument(postgres_url: str) -> None:
    store = SqlStore(postgres_url)
    try:
        bad = Domain.model_validate({"meta": {"name": "a"}, "status": {"message": "x\x00y"}})
        with pytest.raises(InvalidArgument, match=r"\(create Domain a\): .*Unicode"):
            await store.create(bad)
        assert await store.revision() == 0
    finally:
        await store.close()


async def test_changing_the_callers_object_after_a_write_changes_nothing_stored(store: Store) -> None:
    mine = route("r1")
    mine.meta.labels["a"] = "1"
    await store.create(mine)
    mine.spec.endpoint = "https://changed:1"
    mine.meta.labels["a"] = "changed"
    stored = await store.get("DomainRoute", "r1")
    assert stored.spec.endpoint == "" and stored.meta.labels == {"a": "1"}

    stored.status.reason = "mine"
    await store.update(stored)
    stored.status.reason = "changed later"
    stored.meta.labels["b"] = "2"
    again = await store.get("DomainRoute", "r1")
    assert again.status.reason == "mine" and again.meta.labels == {"a": "1"}
