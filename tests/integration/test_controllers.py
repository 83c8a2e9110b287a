"""Job and task controllers with the real RunP runtime and real engines, on a memory and a SQLite store.

Everything here is real except the node process around it: the ControllerManager runs in the test's
event loop (as the node runs it in its TaskGroup), engines are child processes (the built-in `hello`
engine and small `python -c` engines), and a "restart" is a cancelled manager replaced by a new manager
and a new runtime on the same store and directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from accord.controllers.job import JobController
from accord.controllers.manager import ControllerManager
from accord.controllers.queue import Outcome
from accord.controllers.task import TaskController, record_progress
from accord.errors import Conflict, Gone, InvalidArgument, NotFound, Unauthenticated, Unavailable
from accord.resources.appimage import AppImage, AppImageSpec, AppPort
from accord.resources.audit import AuditRecord
from accord.resources.job import Job, JobSpec, Party, Task, TaskSpec
from accord.resources.meta import AnyResource, ObjectMeta
from accord.resources.phases import JOB_TERMINAL, TASK_TERMINAL, JobPhase, ScheduleMode, TaskPhase
from accord.runtimes.base import EngineState
from accord.runtimes.builtin import builtin_appimages
from accord.runtimes.contract import TOKEN_ANNOTATION, token_sha256
from accord.runtimes.process import ProcessRuntime
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent
from accord.store.factory import open_store
from accord.store.memory import MemoryStore

LIMIT = 30.0  # no single wait in this module may take longer
POLL = 0.02

ENV_DUMP_AND_SLEEP = (
    "import json, os, time; json.dump(dict(os.environ), open('env.json', 'w')); time.sleep(600)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Any], what: str, timeout: float = LIMIT) -> Any:
    """Await `check()` (sync or async) until it returns something truthy; fail after `timeout`."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = check()
                if asyncio.iscoroutine(last):
                    last = await last
                if last:
                    return last
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}") from None


class Node:
    """The controller half of a node: store + runtime + manager, restartable."""

    def __init__(self, store_url: str, settings: NodeSettings) -> None:
        self.store_url = store_url
        self.settings = settings
        self.store: Store = open_store(store_url, poll_interval=0.05)
        self.runtime = ProcessRuntime(settings)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        manager = ControllerManager(
            self.store,
            [
                JobController(self.store, self.settings),
                TaskController(self.store, self.settings, self.runtime, poll_interval=0.05, stop_grace=2.0),
            ],
            self.settings,
            resync_seconds=2.0,
        )
        self._task = asyncio.create_task(manager.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self) -> None:
        """Stop the controllers, reopen the store (a new process would) and start a fresh runtime."""
        await self.stop()
        if not self.store_url.startswith("memory"):
            await self.store.close()
            self.store = open_store(self.store_url, poll_interval=0.05)
        self.runtime = ProcessRuntime(self.settings)
        await self.start()

    async def job(self, name: str) -> Job:
        return cast(Job, await self.store.get("Job", name))

    async def task(self, name: str) -> Task:
        return cast(Task, await self.store.get("Task", name))

    async def wait_job(self, name: str, phases: frozenset[JobPhase] = JOB_TERMINAL) -> Job:
        async def done() -> Job | None:
            job = await self.job(name)
            return job if job.status.phase in phases else None

        return cast(Job, await eventually(done, f"job {name} to reach {sorted(phases)}"))

    async def wait_task(self, name: str, phases: frozenset[TaskPhase] = TASK_TERMINAL) -> Task:
        async def done() -> Task | None:
            try:
                task = await self.task(name)
            except NotFound:
                return None
            return task if task.status.phase in phases else None

        return cast(Task, await eventually(done, f"task {name} to reach {sorted(phases)}"))


@pytest.fixture(params=["memory", "sqlite"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    settings = NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=free_port())
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'accord.db'}"
    n = Node(url, settings)
    for image in builtin_appimages(sys.executable):
        await n.store.create(image)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()
        for task in await n.runtime.running_tasks():
            await n.runtime.stop(task, grace=1.0)
        await n.store.close()


def hello_task(alias: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "alias": alias,
        "app_image": extra.pop("app_image", "hello"),
        "parties": extra.pop("parties", [{"domain": "alice"}]),
        "input_config": json.dumps(config or {"numbers": [1, 2, 3]}),
        **extra,
    }


async def submit(node: Node, name: str, *tasks: dict[str, Any], **spec: Any) -> Job:
    job = Job(meta=ObjectMeta(name=name), spec=JobSpec(initiator="alice", tasks=list(tasks), **spec))
    return await node.store.create(job)


async def phase_audit(node: Node, kind: str, name: str) -> list[tuple[str, str]]:
    records = [cast(AuditRecord, r) for r in await node.store.list("AuditRecord")]
    return [
        (r.spec.details["from"], r.spec.details["to"])
        for r in sorted(records, key=lambda r: r.spec.seq)
        if r.spec.action == "phase" and r.spec.target_kind == kind and r.spec.target_name == name
    ]


# -- the happy path ---------------------------------------------------------------------------------


async def test_three_task_dag_succeeds_in_dependency_order(node: Node) -> None:
    await submit(
        node,
        "stats",
        hello_task("load", {"numbers": [1, 2, 3]}),
        hello_task("clean", {"numbers": [4, 5]}, dependencies=["load"]),
        hello_task("report", {"numbers": [6]}, dependencies=["load", "clean"]),
        max_parallelism=2,
    )
    job = await node.wait_job("stats")
    assert job.status.phase == JobPhase.SUCCEEDED, job.status
    assert job.status.reason == "TasksSucceeded" and job.status.message == "all 3 tasks succeeded"
    assert job.status.task_status == {a: TaskPhase.SUCCEEDED for a in ("load", "clean", "report")}
    assert job.status.start_time is not None and job.status.completion_time is not None

    tasks = {a: await node.task(f"stats-{a}") for a in ("load", "clean", "report")}
    for alias, task in tasks.items():
        assert task.meta.labels == {"accord/job": "stats", "accord/task-alias": alias}
        assert task.status.phase == TaskPhase.SUCCEEDED and task.status.progress == 1.0
        assert task.status.message == "engine exited with code 0"
        assert task.status.parties[0].exit_code == 0 and task.status.pid
        assert TOKEN_ANNOTATION in task.meta.annotations
        assert task.status.work_dir == str(node.settings.tasks_dir / task.name)
    # Each task started only after its dependencies completed.
    assert tasks["load"].status.completion_time <= tasks["clean"].status.start_time  # type: ignore[operator]
    assert tasks["clean"].status.completion_time <= tasks["report"].status.start_time  # type: ignore[operator]
    result = json.loads((node.settings.tasks_dir / "stats-clean" / "result.json").read_text())
    assert result["count"] == 2 and result["sum"] == 9 and result["task_id"] == "stats-clean"
    assert "hello: task stats-report" in node.runtime.log_path("stats-report").read_text()

    assert await phase_audit(node, "Job", "stats") == [
        ("Initialized", "Pending"),
        ("Pending", "Running"),
        ("Running", "Succeeded"),
    ]
    assert await phase_audit(node, "Task", "stats-load") == [
        ("Pending", "Preparing"),
        ("Preparing", "Running"),
        ("Running", "Succeeded"),
    ]


async def test_engine_gets_ports_rendered_config_and_a_token_for_progress(node: Node) -> None:
    image = AppImage(
        meta=ObjectMeta(name="dumper"),
        spec=AppImageSpec(
            command=[sys.executable, "-c", ENV_DUMP_AND_SLEEP],
            ports=[AppPort(name="spu", protocol="GRPC")],
            config_templates={"conf": '{"task":"{{.TASK_ID}}","port":{{.KUSCIA_PORT_SPU_NUMBER}}}'},
            config_mounts={"conf": "etc/task.json"},
        ),
    )
    await node.store.create(image)
    await submit(node, "dump", hello_task("d", app_image="dumper"))
    task = await node.wait_task("dump-d", frozenset({TaskPhase.RUNNING}))
    env_file = Path(task.status.work_dir) / "env.json"
    env = json.loads(await eventually(lambda: env_file.exists() and env_file.read_text(), "env.json"))
    (port,) = task.status.allocated_ports
    assert port.name == "spu" and env["KUSCIA_PORT_SPU_NUMBER"] == str(port.port)
    assert task.status.parties[0].endpoints == {"spu": "dump-d-0-spu.alice.svc"}
    conf = json.loads((Path(task.status.work_dir) / "etc" / "task.json").read_text())
    assert conf == {"task": "dump-d", "port": port.port}
    assert env["ACCORD_NODE_API"] == node.settings.api_url

    token = env["ACCORD_TASK_TOKEN"]
    with pytest.raises(Unauthenticated, match="not valid for task 'dump-d'"):
        await record_progress(node.store, "dump-d", "wrong-token", 0.5, "x")
    with pytest.raises(NotFound):
        await record_progress(node.store, "no-such-task", token, 0.5, "x")
    with pytest.raises(InvalidArgument, match="from 0 to 1"):
        await record_progress(node.store, "dump-d", token, 1.5, "x")
    updated = await record_progress(node.store, "dump-d", token, 0.25, "a quarter")
    assert updated.status.progress == 0.25 and updated.status.message == "a quarter"
    assert (await node.task("dump-d")).status.progress == 0.25

    # Deleting the task stops its engine; late reports are then refused.
    pid = task.status.pid
    await node.store.delete("Task", "dump-d")

    async def stopped() -> bool:
        return (await node.runtime.poll("dump-d")).state is not EngineState.RUNNING

    await eventually(stopped, "the deleted task's engine to stop")
    assert pid is not None
    with pytest.raises(NotFound):
        await record_progress(node.store, "dump-d", token, 0.5, "late")
    # The job does not run a deleted task again: it counts it failed.
    job = await node.wait_job("dump")
    assert (
        job.status.phase == JobPhase.FAILED
        and job.status.task_messages["d"] == "the task was deleted before it finished"
    )
    with pytest.raises(NotFound):
        await node.task("dump-d")


async def test_progress_is_refused_once_the_task_finished(node: Node) -> None:
    task = Task(
        meta=ObjectMeta(name="finished", annotations={TOKEN_ANNOTATION: token_sha256("tok")}),
        spec=TaskSpec(
            job="", alias="finished", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = TaskPhase.SUCCEEDED
    await node.store.create(task)
    with pytest.raises(Conflict, match="'finished' already finished \\(Succeeded\\)"):
        await record_progress(node.store, "finished", "tok", 0.5, "late")
    with pytest.raises(Unauthenticated):
        await record_progress(node.store, "finished", "", 0.5, "no token")


# -- failures -----------------------------------------------------------------------------------------


async def test_strict_job_fails_at_the_first_critical_failure_and_stops_the_rest(node: Node) -> None:
    await submit(
        node,
        "strict",
        hello_task("bad", {"numbers": [1], "exit_code": 3}),
        hello_task("slow", {"numbers": [1], "sleep": 60}),
        hello_task("after", dependencies=["bad"]),
        max_parallelism=2,
    )
    job = await node.wait_job("strict")
    assert job.status.phase == JobPhase.FAILED
    assert job.status.reason == "TaskFailed"
    assert job.status.message.startswith("critical task 'bad' failed (bad: engine exited with code 3")
    bad = await node.task("strict-bad")
    assert bad.status.message.startswith("engine exited with code 3")
    slow = await node.wait_task("strict-slow")
    assert slow.status.phase == TaskPhase.FAILED
    assert slow.status.message.startswith("stopped: job 'strict' failed")

    async def slow_engine_stopped() -> bool:
        return (await node.runtime.poll("strict-slow")).state is not EngineState.RUNNING

    await eventually(slow_engine_stopped, "the slow engine to be stopped")
    with pytest.raises(NotFound):
        await node.task("strict-after")
    assert ("Running", "Failed") in await phase_audit(node, "Job", "strict")


async def test_best_effort_job_finishes_independent_work_then_fails(node: Node) -> None:
    await submit(
        node,
        "effort",
        hello_task("bad", {"exit_code": 1}),
        hello_task("other", {"numbers": [2], "sleep": 0.3}),
        hello_task("after-bad", dependencies=["bad"]),
        hello_task("after-other", dependencies=["other"]),
        schedule_mode=ScheduleMode.BEST_EFFORT,
        max_parallelism=2,
    )
    job = await node.wait_job("effort")
    assert job.status.phase == JobPhase.FAILED
    assert job.status.message.startswith("critical task 'bad' failed (bad: engine exited with code 1")
    assert job.status.task_status == {
        "bad": TaskPhase.FAILED,
        "other": TaskPhase.SUCCEEDED,
        "after-other": TaskPhase.SUCCEEDED,
    }
    assert "engine exited with code 1" in job.status.task_messages["bad"]
    with pytest.raises(NotFound):
        await node.task("effort-after-bad")  # a descendant of a failed task is never created


async def test_tolerable_failure_does_not_fail_the_job(node: Node) -> None:
    await submit(
        node,
        "tolerant",
        hello_task("optional", {"exit_code": 5}, tolerable=True),
        hello_task("main", {"numbers": [1, 1]}),
        max_parallelism=2,
    )
    job = await node.wait_job("tolerant")
    assert job.status.phase == JobPhase.SUCCEEDED
    assert "tolerable task 'optional' failed" in job.status.message
    assert (await node.task("tolerant-optional")).status.phase == TaskPhase.FAILED


async def test_crashed_engine_is_reported_as_crashed(node: Node) -> None:
    await submit(node, "crashy", hello_task("boom", {"crash": True}))
    job = await node.wait_job("crashy")
    assert job.status.phase == JobPhase.FAILED
    task = await node.task("crashy-boom")
    assert task.status.message.startswith("engine crashed (killed by signal SIGKILL)")
    assert task.status.parties[0].crashed and task.status.parties[0].exit_code is None


async def test_unknown_appimage_fails_the_task_naming_it(node: Node) -> None:
    await submit(node, "ghost", hello_task("t", app_image="no-such-engine"))
    job = await node.wait_job("ghost")
    assert job.status.phase == JobPhase.FAILED
    task = await node.task("ghost-t")
    assert task.status.message.startswith("AppImage 'no-such-engine' not found")
    assert job.status.task_messages["t"] == task.status.message


async def test_cross_domain_job_fails_until_interop_exists(node: Node) -> None:
    await submit(node, "joint", hello_task("psi", parties=[{"domain": "alice"}, {"domain": "bob"}]))
    job = await node.wait_job("joint")
    assert job.status.phase == JobPhase.FAILED and job.status.reason == "CrossDomainUnsupported"
    assert "'bob'" not in job.status.message and "bob" in job.status.message
    assert "interop" in job.status.message
    assert await node.store.list("Task") == []


async def test_invalid_dag_fails_validation(node: Node) -> None:
    await submit(
        node,
        "loop",
        hello_task("a", dependencies=["b"]),
        hello_task("b", dependencies=["a"]),
    )
    job = await node.wait_job("loop")
    assert job.status.phase == JobPhase.FAILED and job.status.reason == "ValidateFailed"
    assert "cycle" in job.status.message
    assert await phase_audit(node, "Job", "loop") == [("Initialized", "Failed")]


async def test_task_name_clash_with_another_job_fails_the_job(node: Node) -> None:
    await submit(node, "first", hello_task("t", task_id="shared-task"))
    await node.wait_job("first")
    await submit(node, "second", hello_task("t", task_id="shared-task"))
    job = await node.wait_job("second")
    assert job.status.phase == JobPhase.FAILED and job.status.reason == "TaskCreateFailed"
    assert "belongs to job 'first'" in job.status.message


async def test_deleting_a_job_deletes_its_tasks_and_stops_engines(node: Node) -> None:
    await submit(node, "doomed", hello_task("long", {"sleep": 60}))
    await node.wait_task("doomed-long", frozenset({TaskPhase.RUNNING}))
    await node.store.delete("Job", "doomed")

    async def gone() -> bool:
        tasks = await node.store.list("Task")
        engine = await node.runtime.poll("doomed-long")
        return not tasks and engine.state is not EngineState.RUNNING

    await eventually(gone, "the job's task and engine to be gone")


# -- restarts -----------------------------------------------------------------------------------------


async def test_restarted_node_adopts_a_running_engine(node: Node) -> None:
    await submit(node, "survivor", hello_task("work", {"numbers": [7], "sleep": 1.5}))
    running = await node.wait_task("survivor-work", frozenset({TaskPhase.RUNNING}))
    await node.stop()
    assert (await node.runtime.poll("survivor-work")).state is EngineState.RUNNING  # outlived the node
    await node.restart()
    job = await node.wait_job("survivor")
    assert job.status.phase == JobPhase.SUCCEEDED, job.status
    done = await node.task("survivor-work")
    assert done.status.pid == running.status.pid  # the same engine, not a second one
    assert node.runtime.log_path("survivor-work").read_text().count("starts") == 1


async def test_engine_lost_while_the_node_was_down_fails_the_task(node: Node) -> None:
    await submit(node, "unlucky", hello_task("work", {"sleep": 60}))
    running = await node.wait_task("unlucky-work", frozenset({TaskPhase.RUNNING}))
    await node.stop()
    assert running.status.pid is not None
    os.killpg(running.status.pid, signal.SIGKILL)  # the engine and its launcher die with nothing recorded
    await node.restart()
    job = await node.wait_job("unlucky")
    assert job.status.phase == JobPhase.FAILED
    task = await node.task("unlucky-work")
    assert task.status.message.startswith("engine lost while the node was down")


async def test_job_resumes_when_its_tasks_finished_before_it_was_marked_running(node: Node) -> None:
    # The state a crash leaves between "task created" and "job Running written", found after the task ran.
    await node.stop()
    task = Task(
        meta=ObjectMeta(name="resumed-only", labels={"accord/job": "resumed", "accord/task-alias": "only"}),
        spec=TaskSpec(
            job="resumed", alias="only", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = TaskPhase.SUCCEEDED
    await node.store.create(task)
    job = Job(meta=ObjectMeta(name="resumed"), spec=JobSpec(initiator="alice", tasks=[hello_task("only")]))
    job.status.phase = JobPhase.PENDING
    await node.store.create(job)
    await node.start()
    done = await node.wait_job("resumed")
    assert done.status.phase == JobPhase.SUCCEEDED
    assert await phase_audit(node, "Job", "resumed") == [("Pending", "Running"), ("Running", "Succeeded")]


async def test_task_deleted_while_the_node_was_down_has_its_engine_stopped(node: Node) -> None:
    task = Task(
        meta=ObjectMeta(name="lonely"),
        spec=TaskSpec(
            job="",
            alias="lonely",
            initiator="alice",
            app_image="hello",
            parties=[Party(domain="alice")],
            input_config='{"sleep": 60}',
        ),
    )
    await node.store.create(task)
    await node.wait_task("lonely", frozenset({TaskPhase.RUNNING}))
    await node.stop()
    await node.store.delete("Task", "lonely")
    await node.restart()

    async def stopped() -> bool:
        return (await node.runtime.poll("lonely")).state is not EngineState.RUNNING

    await eventually(stopped, "the orphaned engine to be stopped")


# -- the manager on its own ---------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """A real MemoryStore whose first list fails (store down) and whose first watch has expired."""

    def __init__(self) -> None:
        super().__init__()
        self.list_failures = 1
        self.watch_expiries = 1

    async def list(self, kind: str, **kwargs: Any) -> list[AnyResource]:
        if self.list_failures:
            self.list_failures -= 1
            raise Unavailable("the store is restarting")
        return await super().list(kind, **kwargs)

    def watch(self, kind: str | None = None, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        if self.watch_expiries:
            self.watch_expiries -= 1
            raise Gone("history compacted")
        return super().watch(kind, **kwargs)


class Recorder:
    """A controller that records the names it is asked to reconcile."""

    kind = "AppImage"

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.related = {"Task": lambda event: [f"from-{event.name}"]}

    async def reconcile(self, name: str) -> Outcome:
        self.seen[name] += 1
        return Outcome.done()

    async def extra_names(self) -> list[str]:
        return ["phantom"]


def plain_settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path, api_port=free_port())


async def test_manager_recovers_from_store_errors_and_expired_watches(tmp_path: Path) -> None:
    store = FlakyStore()
    for image in builtin_appimages(sys.executable):
        await store.create(image)
    recorder = Recorder()
    manager = ControllerManager(store, [recorder], plain_settings(tmp_path), resync_seconds=0)
    runner = asyncio.create_task(manager.run())
    try:
        await eventually(lambda: recorder.seen["hello"] and recorder.seen["phantom"], "the initial list")
        await store.create(AppImage(meta=ObjectMeta(name="later"), spec=AppImageSpec(command=["true"])))
        await eventually(lambda: recorder.seen["later"], "a watched change")
        task = Task(
            meta=ObjectMeta(name="t1"),
            spec=TaskSpec(
                job="", alias="t1", initiator="alice", app_image="x", parties=[Party(domain="alice")]
            ),
        )
        await store.create(task)
        await eventually(lambda: recorder.seen["from-t1"], "a related change mapped to our kind")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert store.list_failures == 0 and store.watch_expiries == 0
    assert all(queue.busy_keys() == [] for queue in manager.queues.values())


async def test_manager_resyncs_periodically(tmp_path: Path) -> None:
    store = MemoryStore()
    await store.create(AppImage(meta=ObjectMeta(name="quiet"), spec=AppImageSpec(command=["true"])))
    recorder = Recorder()
    manager = ControllerManager(store, [recorder], plain_settings(tmp_path), resync_seconds=0.02)
    runner = asyncio.create_task(manager.run())
    try:
        await eventually(lambda: recorder.seen["quiet"] >= 3, "repeated resyncs without any change")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def test_manager_refuses_two_controllers_for_one_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="more than one controller for kind"):
        ControllerManager(MemoryStore(), [Recorder(), Recorder()], plain_settings(tmp_path))
