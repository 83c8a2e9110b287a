"""ResourceService, LogService and the Services container against a real MemoryStore."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from accord.errors import (
    AlreadyExists,
    Conflict,
    ErrorCode,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from accord.resources import AppImage, AuditRecord, Job, JobPhase, ObjectMeta, Party, Task, TaskPhase
from accord.resources.job import TaskSpec
from accord.services import Services
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

ACTOR = "user"

JOB = """
kind: Job
meta: {name: %(name)s}
spec:
  initiator: alice
  tasks:
    - {alias: a, app_image: hello, parties: [{domain: alice}]}
    - {alias: b, app_image: hello, parties: [{domain: %(party)s}], dependencies: [%(dep)s]}
"""

APPIMAGE = """
kind: AppImage
meta: {name: %(name)s, labels: {tier: %(tier)s}}
spec: {command: [python, -m, %(module)s]}
"""

DOMAIN_BOB = """
kind: Domain
meta: {name: bob}
spec: {role: partner}
"""


def job(name: str = "j1", party: str = "alice", dep: str = "a") -> str:
    return JOB % {"name": name, "party": party, "dep": dep}


def appimage(name: str = "hello", tier: str = "gold", module: str = "accord.engines.hello") -> str:
    return APPIMAGE % {"name": name, "tier": tier, "module": module}


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path)


@pytest.fixture
async def store() -> Any:
    s = MemoryStore()
    yield s
    await s.close()


@pytest.fixture
def services(store: MemoryStore, settings: NodeSettings) -> Services:
    return Services.build(store=store, settings=settings, log_poll_seconds=0.01)


async def audit_actions(store: MemoryStore) -> list[tuple[str, str, str, str]]:
    records = await store.list("AuditRecord")
    out = []
    for r in records:
        assert isinstance(r, AuditRecord)
        out.append((r.spec.actor, r.spec.action, r.spec.target_kind, r.spec.target_name))
    return out


# -- apply -------------------------------------------------------------------------------------------


async def test_apply_creates_then_reports_unchanged_and_updated(
    services: Services, store: MemoryStore
) -> None:
    results = await services.resources.apply(appimage() + "---\n" + job(), ACTOR)
    assert [(r.kind, r.name, r.action) for r in results] == [
        ("AppImage", "hello", "created"),
        ("Job", "j1", "created"),
    ]
    again = await services.resources.apply(appimage() + "---\n" + job(), ACTOR)
    assert [r.action for r in again] == ["unchanged", "unchanged"]
    changed = await services.resources.apply(appimage(tier="silver"), ACTOR)
    assert [r.action for r in changed] == ["updated"]
    stored = await store.get("AppImage", "hello")
    assert stored.meta.labels == {"tier": "silver"}
    assert stored.meta.generation == 1  # labels only: spec generation unchanged
    assert await audit_actions(store) == [
        (ACTOR, "create", "AppImage", "hello"),
        (ACTOR, "create", "Job", "j1"),
        (ACTOR, "update", "AppImage", "hello"),
    ]


async def test_apply_defaults_domain_and_ignores_user_status(services: Services, store: MemoryStore) -> None:
    text = job() + "status: {phase: Succeeded}\n"
    await services.resources.apply(text, ACTOR)
    stored = await store.get("Job", "j1")
    assert isinstance(stored, Job)
    assert stored.meta.domain == "alice"
    assert stored.status.phase == "Initialized"


async def test_apply_is_all_or_nothing(services: Services, store: MemoryStore) -> None:
    text = appimage() + "---\n" + job(dep="b")  # b depends on itself
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(text, ACTOR)
    assert info.value.code == ErrorCode.JOB_DAG_CYCLE
    assert info.value.message == "document 2: task 'b' depends on itself"
    assert await store.revision() == 0
    assert await store.list("AppImage") == []


async def test_apply_cycle_names_the_cycle(services: Services, store: MemoryStore) -> None:
    text = """
kind: Job
meta: {name: loop}
spec:
  initiator: alice
  tasks:
    - {alias: a, app_image: hello, parties: [{domain: alice}], dependencies: [c]}
    - {alias: b, app_image: hello, parties: [{domain: alice}], dependencies: [a]}
    - {alias: c, app_image: hello, parties: [{domain: alice}], dependencies: [b]}
"""
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(text, ACTOR)
    assert info.value.code == ErrorCode.JOB_DAG_CYCLE
    assert "the task dependencies form a cycle: a -> c -> b -> a" in info.value.message


async def test_apply_unknown_dependency(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(job(dep="nope"), ACTOR)
    assert info.value.code == ErrorCode.JOB_UNKNOWN_DEPENDENCY
    assert "task 'b' depends on 'nope', which is not a task of this job" in info.value.message


async def test_apply_unknown_party_then_known_via_domain(services: Services, store: MemoryStore) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(job(party="bob"), ACTOR)
    assert info.value.code == ErrorCode.JOB_UNKNOWN_PARTY
    assert "party 'bob' is not a known domain" in info.value.message
    assert await store.revision() == 0
    # the same stream with bob's Domain in front is valid
    results = await services.resources.apply(DOMAIN_BOB + "---\n" + job(party="bob"), ACTOR)
    assert [r.action for r in results] == ["created", "created"]


async def test_apply_invalid_name(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(job(name="Bad_Name"), ACTOR)
    assert info.value.code == ErrorCode.JOB_INVALID
    assert "meta.name" in info.value.message and "'Bad_Name' is not a DNS label" in info.value.message


async def test_apply_malformed_yaml(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply("kind: Job\nmeta: {name: x\n", ACTOR)
    assert info.value.code == ErrorCode.MALFORMED_DOCUMENT
    assert info.value.message.startswith("malformed YAML at line")


async def test_apply_unknown_kind(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(appimage() + "---\nkind: Gizmo\nmeta: {name: g}\nspec: {}\n", ACTOR)
    assert info.value.code == ErrorCode.UNKNOWN_KIND
    assert info.value.message.startswith("document 2: unknown kind 'Gizmo'; known kinds:")


async def test_apply_same_object_twice_in_stream(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(appimage() + "---\n" + appimage(tier="x"), ACTOR)
    assert info.value.code == ErrorCode.MALFORMED_DOCUMENT
    assert "AppImage 'hello' appears more than once in the stream (documents 1 and 2)" in info.value.message


async def test_apply_refuses_changed_job_spec(services: Services, store: MemoryStore) -> None:
    await services.resources.apply(job(), ACTOR)
    before = await store.revision()
    with pytest.raises(Conflict) as info:
        await services.resources.apply(job().replace("app_image: hello", "app_image: other", 1), ACTOR)
    assert info.value.code == ErrorCode.CONFLICT
    assert (
        "the spec of Job 'j1' cannot change after it is created: delete and re-create" in info.value.message
    )
    assert await store.revision() == before


async def test_apply_stale_resource_version(services: Services, store: MemoryStore) -> None:
    await services.resources.apply(appimage(), ACTOR)
    await services.resources.apply(appimage(tier="silver"), ACTOR)
    stale = appimage(tier="bronze").replace("meta: {name: hello,", "meta: {resource_version: 1, name: hello,")
    with pytest.raises(Conflict) as info:
        await services.resources.apply(stale, ACTOR)
    assert "resource_version 1 is stale" in info.value.message


async def test_apply_kuscia_job(services: Services, store: MemoryStore) -> None:
    text = Path(__file__).resolve().parents[2].joinpath("examples", "hello-job.yaml").read_text()
    results = await services.resources.apply(text, ACTOR)
    assert [(r.kind, r.name, r.action) for r in results] == [("Job", "hello-demo", "created")]
    stored = await store.get("Job", "hello-demo")
    assert isinstance(stored, Job)
    assert [t.alias for t in stored.spec.tasks] == ["stats-a", "stats-b", "summary"]


async def test_users_cannot_create_tasks_or_audit_records(services: Services, store: MemoryStore) -> None:
    task = (
        "kind: Task\nmeta: {name: t1}\n"
        "spec: {job: j, alias: a, initiator: alice, app_image: x, parties: [{domain: alice}]}\n"
    )
    with pytest.raises(PermissionDenied) as info:
        await services.resources.apply(task, ACTOR)
    assert info.value.code == ErrorCode.PERMISSION_DENIED
    assert "users cannot create Task objects ('t1')" in info.value.message
    record = {
        "kind": "AuditRecord",
        "meta": {"name": "audit-000000000001"},
        "spec": {"seq": 1, "time": "2024-01-01T00:00:00Z", "actor": "me", "action": "x"}
        | {"prev_hash": "0", "hash": "1"},
    }
    with pytest.raises(PermissionDenied):
        await services.resources.create(record, ACTOR)
    assert await store.revision() == 0


async def test_validators_run_before_any_write(store: MemoryStore, settings: NodeSettings) -> None:
    def no_bash(obj: Any) -> None:
        assert isinstance(obj, AppImage)
        if "bash" in obj.spec.command:
            raise ValueError("command may not be bash")

    services = Services.build(store=store, settings=settings, validators={"AppImage": no_bash})
    bad = "kind: AppImage\nmeta: {name: evil}\nspec: {command: [bash]}\n"
    with pytest.raises(InvalidArgument) as info:
        await services.resources.apply(appimage() + "---\n" + bad, ACTOR)
    assert info.value.code == ErrorCode.APPIMAGE_INVALID
    assert info.value.message == "document 2: invalid AppImage 'evil': command may not be bash"
    assert await store.revision() == 0


# -- create / get / list / replace ------------------------------------------------------------------------


async def test_create_checks_url_kind_and_existing(services: Services) -> None:
    doc = {"kind": "AppImage", "meta": {"name": "x"}, "spec": {}}
    created = await services.resources.create(doc, ACTOR, kind="appimages")
    assert created.meta.resource_version == 1 and created.meta.domain == "alice"
    with pytest.raises(AlreadyExists) as info:
        await services.resources.create(doc, ACTOR, kind="AppImage")
    assert info.value.code == ErrorCode.APPIMAGE_EXISTS
    with pytest.raises(InvalidArgument) as mismatch:
        await services.resources.create(doc, ACTOR, kind="jobs")
    assert mismatch.value.message == "the document's kind AppImage does not match the kind in the URL (Job)"


async def test_list_with_selector_and_domain(services: Services) -> None:
    await services.resources.apply(appimage("a", "gold") + "---\n" + appimage("b", "silver"), ACTOR)
    names = [o.meta.name for o in await services.resources.list("appimage", "tier=gold")]
    assert names == ["a"]
    assert [o.meta.name for o in await services.resources.list("AppImage", None, "bob")] == []
    with pytest.raises(InvalidArgument):
        await services.resources.list("AppImage", "bad key!=x")
    with pytest.raises(NotFound) as info:
        await services.resources.get("jobs", "missing")
    assert info.value.code == ErrorCode.JOB_NOT_FOUND
    assert info.value.message == "Job 'missing' not found"


async def test_replace_is_cas_and_keeps_status(services: Services, store: MemoryStore) -> None:
    await services.resources.apply(job(), ACTOR)
    current = await store.get("Job", "j1")
    assert isinstance(current, Job)
    current.status.phase = JobPhase.RUNNING
    running = await store.update(current)  # a controller's status write
    doc = running.to_document()
    doc["meta"]["labels"] = {"team": "risk"}
    doc["status"] = {"phase": "Succeeded"}  # users never write status
    replaced = await services.resources.replace(doc, ACTOR, kind="job", name="j1")
    assert isinstance(replaced, Job)
    assert replaced.meta.labels == {"team": "risk"}
    assert replaced.status.phase == "Running"
    # the same (now stale) version again
    with pytest.raises(Conflict) as info:
        await services.resources.replace(doc, ACTOR)
    assert f"resource_version {running.meta.resource_version} is stale" in info.value.message
    doc["meta"]["resource_version"] = 0
    with pytest.raises(InvalidArgument) as missing:
        await services.resources.replace(doc, ACTOR)
    assert "meta.resource_version is required to replace Job 'j1'" in missing.value.message
    changed = replaced.to_document()
    changed["spec"]["max_parallelism"] = 4
    with pytest.raises(Conflict) as immutable:
        await services.resources.replace(changed, ACTOR)
    assert "delete and re-create" in immutable.value.message


async def test_replace_mutable_spec_bumps_generation(services: Services) -> None:
    await services.resources.apply(appimage(), ACTOR)
    doc = (await services.resources.get("AppImage", "hello")).to_document()
    doc["spec"]["command"] = ["python", "-m", "other"]
    replaced = await services.resources.replace(doc, ACTOR, kind="AppImage", name="hello")
    assert replaced.meta.generation == 2
    with pytest.raises(InvalidArgument) as info:
        await services.resources.replace(doc, ACTOR, kind="AppImage", name="other")
    assert "does not match the name in the URL" in info.value.message


# -- delete ----------------------------------------------------------------------------------------------


async def _task(store: MemoryStore, name: str, job_name: str, phase: TaskPhase = TaskPhase.PENDING) -> Task:
    task = Task(
        meta=ObjectMeta(name=name, domain="alice", labels={"accord/job": job_name}),
        spec=TaskSpec(
            job=job_name, alias=name, initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = phase
    return await store.create(task)


async def test_delete_job_cascades_to_its_tasks(services: Services, store: MemoryStore) -> None:
    await services.resources.apply(job() + "---\n" + job(name="j2"), ACTOR)
    await _task(store, "j1-a", "j1")
    await _task(store, "j1-b", "j1")
    await _task(store, "j2-a", "j2")
    with pytest.raises(PermissionDenied) as info:
        await services.resources.delete("task", "j1-a", None, ACTOR)
    assert "Task 'j1-a' belongs to Job 'j1': delete the Job" in info.value.message
    deleted = await services.resources.delete("jobs", "j1", None, ACTOR)
    assert deleted.meta.name == "j1"
    assert [t.meta.name for t in await store.list("Task")] == ["j2-a"]
    actions = await audit_actions(store)
    assert actions[-3:] == [
        (ACTOR, "delete", "Job", "j1"),
        (ACTOR, "delete", "Task", "j1-a"),
        (ACTOR, "delete", "Task", "j1-b"),
    ]
    records = await store.list("AuditRecord")
    assert isinstance(records[-1], AuditRecord)
    assert records[-1].spec.details == {"cascade": "Job/j1"}


async def test_delete_rules(services: Services, store: MemoryStore) -> None:
    await services.resources.apply(appimage(), ACTOR)
    with pytest.raises(Conflict):
        await services.resources.delete("AppImage", "hello", 999, ACTOR)
    with pytest.raises(PermissionDenied) as info:
        await services.resources.delete("audit", "audit-000000000001", None, ACTOR)
    assert "append-only" in info.value.message
    with pytest.raises(NotFound):
        await services.resources.delete("AppImage", "nope", None, ACTOR)
    orphan = await _task(store, "orphan", "gone-job")
    await services.resources.delete("Task", "orphan", orphan.meta.resource_version, ACTOR)
    await services.resources.delete("AppImage", "hello", None, ACTOR)
    assert await store.list("AppImage") == []


# -- watch -----------------------------------------------------------------------------------------------


async def test_watch_checks_arguments_up_front_and_streams(services: Services) -> None:
    with pytest.raises(InvalidArgument) as info:
        services.resources.watch("gizmos")
    assert info.value.code == ErrorCode.UNKNOWN_KIND
    await services.resources.apply(appimage("a") + "---\n" + job(), ACTOR)
    events = services.resources.watch("jobs", since=0)
    event = await asyncio.wait_for(anext(events), timeout=5)
    assert (event.type, event.kind, event.name) == ("ADDED", "Job", "j1")
    await events.aclose()  # type: ignore[attr-defined]


# -- logs ------------------------------------------------------------------------------------------------


async def test_logs_read_and_errors(services: Services, store: MemoryStore, settings: NodeSettings) -> None:
    with pytest.raises(NotFound) as missing:
        await services.logs.read("nope")
    assert missing.value.code == ErrorCode.TASK_NOT_FOUND
    with pytest.raises(InvalidArgument) as bad:
        await services.logs.stream("../../etc")
    assert bad.value.code == ErrorCode.TASK_INVALID
    await _task(store, "t1", "j")
    assert await services.logs.read("t1") == ""  # the engine has not started writing yet
    log_file = settings.tasks_dir / "t1" / "engine.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes("hello \u00e9\n".encode())
    assert await services.logs.read("t1") == "hello \u00e9\n"


async def test_logs_follow_ends_when_the_task_ends(
    services: Services, store: MemoryStore, settings: NodeSettings
) -> None:
    task = await _task(store, "t2", "j")
    log_file = settings.tasks_dir / "t2" / "engine.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("line 1\n")
    chunks = await services.logs.stream("t2", follow=True)

    async def collect() -> str:
        return "".join([c async for c in chunks])

    reader = asyncio.create_task(collect())
    await asyncio.sleep(0.05)
    assert not reader.done()  # still following: the task is running
    with log_file.open("a") as f:
        f.write("line 2\n")
    task.status.phase = TaskPhase.SUCCEEDED
    await store.update(task)
    with log_file.open("a") as f:  # written after the phase change, before the follower noticed
        f.write("line 3\n")
    text = await asyncio.wait_for(reader, timeout=5)
    assert text == "line 1\nline 2\nline 3\n"


async def test_logs_of_a_finished_task_without_a_work_dir_say_why(
    services: Services, store: MemoryStore, settings: NodeSettings
) -> None:
    task = await _task(store, "t3", "j")
    task.status.phase = TaskPhase.SUCCEEDED
    await store.update(task)
    with pytest.raises(NotFound) as gone:  # e.g. swept after task_retention_hours
        await services.logs.read("t3")
    assert gone.value.code == ErrorCode.TASK_NOT_FOUND
    assert "work dir does not exist" in gone.value.message and "task_retention_hours" in gone.value.message
    (settings.tasks_dir / "t3").mkdir(parents=True)  # the dir exists, the engine wrote nothing
    assert await services.logs.read("t3") == ""


# -- container -------------------------------------------------------------------------------------------


async def test_node_info_merges_the_daemon_report(store: MemoryStore, settings: NodeSettings) -> None:
    async def info() -> dict[str, Any]:
        return {"modules": {"api": "running"}, "isolation": "none"}

    services = Services.build(store=store, settings=settings, node_info=info)
    report = await services.node_info()
    assert report["domain"] == "alice"
    assert report["modules"] == {"api": "running"}
    assert report["isolation"] == "none"
    assert report["revision"] == 0
    plain = await Services.build(store=store, settings=settings).node_info()
    assert plain["store"] == "MemoryStore"


async def test_audit_verify_after_writes(services: Services) -> None:
    await services.resources.apply(appimage() + "---\n" + job(), ACTOR)
    report = await services.audit.verify()
    assert report.ok
    assert report.records == 2
    records = await services.audit.records_about("Job", "j1")
    assert [r.spec.action for r in records] == ["create"]
