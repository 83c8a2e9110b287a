"""TaskDirSweeper: which task work dirs the retention sweep removes, and how (never through a link).

The store is a MemoryStore and the clock is the test's; the runtime is a stub whose `poll` says what the
test wants, except in the last test, where a real RunP engine runs in the directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from accord.controllers.taskdirs import ACTION, TaskDirSweeper
from accord.resources.appimage import AppImage, AppImageSpec
from accord.resources.audit import AuditRecord
from accord.resources.job import Party, Task, TaskSpec
from accord.resources.meta import ObjectMeta
from accord.resources.phases import TaskPhase
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec, Runtime
from accord.runtimes.process import ProcessRuntime
from accord.runtimes.sandbox import NOBODY, detect_isolation
from accord.runtimes.taskfiles import remove_task_dir
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

HOUR = 3600.0
NOW = 1_900_000_000.0  # the tests' clock; every dir is dated relative to it


class StubRuntime:
    """Only `poll`, the one call the sweeper makes: Running for the names in `running`."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.polled: list[str] = []

    async def poll(self, task: str, uid: str | None = None) -> EngineStatus:
        self.polled.append(task)
        state = EngineState.RUNNING if task in self.running else EngineState.EXITED
        return EngineStatus(state, pid=4242 if task in self.running else None, exit_code=0)


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path / "node", task_retention_hours=72)


def make_dir(settings: NodeSettings, name: str, *, age_hours: float) -> Path:
    path = settings.tasks_dir / name
    (path / ".sandbox" / "run").mkdir(parents=True)
    (path / "engine.log").write_text("hello\n")
    (path / "result.json").write_text("{}")
    when = NOW - age_hours * HOUR
    for p in (path / "engine.log", path):
        os.utime(p, (when, when))
    return path


async def add_task(
    store: MemoryStore, name: str, phase: TaskPhase, *, done_hours_ago: float | None = None
) -> None:
    task = Task(
        meta=ObjectMeta(name=name, domain="alice"),
        spec=TaskSpec(
            job="j", alias="a", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = phase
    if done_hours_ago is not None:
        task.status.completion_time = datetime.fromtimestamp(NOW - done_hours_ago * HOUR, UTC)
    await store.create(task)


def sweeper(store: MemoryStore, settings: NodeSettings, runtime: object) -> TaskDirSweeper:
    return TaskDirSweeper(store, settings, cast(Runtime, runtime), clock=lambda: NOW)


async def audit_targets(store: MemoryStore) -> list[str]:
    records = cast(list[AuditRecord], await store.list("AuditRecord"))
    return [r.spec.target_name for r in records if r.spec.action == ACTION]


async def test_removes_only_finished_and_expired_task_dirs(settings: NodeSettings) -> None:
    store, runtime = MemoryStore(), StubRuntime()
    await add_task(store, "done-old", TaskPhase.SUCCEEDED, done_hours_ago=100)
    await add_task(store, "failed-old", TaskPhase.FAILED)  # no completion time: the dir's mtime counts
    await add_task(store, "done-recently", TaskPhase.SUCCEEDED, done_hours_ago=10)
    await add_task(store, "still-running", TaskPhase.RUNNING)
    await add_task(store, "engine-alive", TaskPhase.FAILED, done_hours_ago=100)
    runtime.running.add("engine-alive")
    for name in ("done-old", "failed-old", "done-recently", "still-running", "engine-alive", "deleted-task"):
        make_dir(settings, name, age_hours=100)
    make_dir(settings, "deleted-young", age_hours=1)
    log_written = make_dir(settings, "log-written", age_hours=100)
    os.utime(log_written / "engine.log", (NOW - HOUR, NOW - HOUR))  # the engine wrote an hour ago
    make_dir(settings, "Not_A_Task", age_hours=100)

    removed = await sweeper(store, settings, runtime).sweep()

    assert sorted(removed) == ["deleted-task", "done-old", "failed-old"]
    left = sorted(p.name for p in settings.tasks_dir.iterdir())
    assert left == [
        "Not_A_Task",
        "deleted-young",
        "done-recently",
        "engine-alive",
        "log-written",
        "still-running",
    ]
    assert sorted(await audit_targets(store)) == removed
    assert "engine-alive" in runtime.polled  # asked the runtime, not only the store
    records = cast(list[AuditRecord], await store.list("AuditRecord"))
    details = {r.spec.target_name: r.spec.details for r in records if r.spec.action == ACTION}
    assert details["deleted-task"]["reason"] == "task no longer exists"
    assert details["done-old"]["reason"] == "task Succeeded"
    assert details["done-old"]["path"] == str(settings.tasks_dir / "done-old")


async def test_completion_time_later_than_the_mtime_keeps_the_dir(settings: NodeSettings) -> None:
    store = MemoryStore()
    await add_task(store, "t1", TaskPhase.SUCCEEDED, done_hours_ago=5)
    make_dir(settings, "t1", age_hours=100)
    assert await sweeper(store, settings, StubRuntime()).sweep() == []
    assert (settings.tasks_dir / "t1").is_dir()


async def test_zero_retention_keeps_everything(settings: NodeSettings) -> None:
    forever = settings.model_copy(update={"task_retention_hours": 0.0})
    make_dir(forever, "t1", age_hours=10_000)
    assert await sweeper(MemoryStore(), forever, StubRuntime()).sweep() == []
    assert (forever.tasks_dir / "t1").is_dir()


async def test_no_tasks_dir_is_nothing_to_do(settings: NodeSettings) -> None:
    assert await sweeper(MemoryStore(), settings, StubRuntime()).sweep() == []


async def test_links_are_never_followed(settings: NodeSettings, tmp_path: Path) -> None:
    """A link planted inside a task dir is removed, not its target; a link in place of a task dir stays."""
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "secret").write_text("do not delete")
    task_dir = make_dir(settings, "planted", age_hours=100)
    (task_dir / "to-dir").symlink_to(outside)
    (task_dir / "to-file").symlink_to(outside / "secret")
    (task_dir / "sub").mkdir()
    (task_dir / "sub" / "deep").symlink_to(outside / "keep")
    os.utime(task_dir, (NOW - 100 * HOUR, NOW - 100 * HOUR), follow_symlinks=False)
    (settings.tasks_dir / "linked").symlink_to(outside, target_is_directory=True)
    os.utime(settings.tasks_dir / "linked", (NOW - 100 * HOUR,) * 2, follow_symlinks=False)
    os.utime(outside, (NOW - 100 * HOUR,) * 2)

    removed = await sweeper(MemoryStore(), settings, StubRuntime()).sweep()

    assert removed == ["planted"]
    assert not task_dir.exists()
    assert (outside / "secret").read_text() == "do not delete" and (outside / "keep").is_dir()
    assert (settings.tasks_dir / "linked").is_symlink()
    with pytest.raises(NotADirectoryError):
        remove_task_dir(settings.tasks_dir / "linked")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave files as another uid")
async def test_files_of_the_engine_uid_in_a_sticky_dir_are_removed(settings: NodeSettings) -> None:
    task_dir = make_dir(settings, "sandboxed", age_hours=100)
    os.chmod(task_dir, 0o1777)  # root-owned and sticky, as the sandbox leaves it
    out = task_dir / "out"
    out.mkdir()
    (out / "result.csv").write_text("a,b\n")
    os.chmod(out, 0o500)  # the engine took away its own write permission
    for p in (out / "result.csv", out):
        os.chown(p, NOBODY, NOBODY, follow_symlinks=False)
    os.utime(task_dir, (NOW - 100 * HOUR,) * 2)
    os.chmod(settings.tasks_dir, 0o755)
    assert await sweeper(MemoryStore(), settings, StubRuntime()).sweep() == ["sandboxed"]
    assert not task_dir.exists()
    assert stat.S_IMODE(settings.tasks_dir.stat().st_mode) == 0o755  # the tasks root is untouched


async def test_a_failed_removal_is_retried_at_the_next_sweep(
    settings: NodeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dir(settings, "t1", age_hours=100)
    calls: list[Path] = []

    def failing(path: Path) -> None:
        calls.append(path)
        raise PermissionError(13, "denied", str(path))

    monkeypatch.setattr("accord.controllers.taskdirs.remove_task_dir", failing)
    store = MemoryStore()
    sweep = sweeper(store, settings, StubRuntime())
    assert await sweep.sweep() == []
    assert await audit_targets(store) == []
    monkeypatch.undo()
    assert await sweep.sweep() == ["t1"]
    assert len(calls) == 1


async def test_the_module_sweeps_periodically_until_cancelled(settings: NodeSettings) -> None:
    fast = settings.model_copy(update={"task_sweep_seconds": 0.05})
    sweep = TaskDirSweeper(MemoryStore(), fast, cast(Runtime, StubRuntime()), clock=lambda: NOW)
    runner = asyncio.create_task(sweep.run())
    try:
        await asyncio.sleep(0.1)
        make_dir(fast, "late", age_hours=100)  # appears after the first sweep
        for _ in range(500):
            if not (fast.tasks_dir / "late").exists():
                break
            await asyncio.sleep(0.02)
        assert not (fast.tasks_dir / "late").exists()
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_waits_for_the_tasks_own_lock(settings: NodeSettings) -> None:
    """Prepare/start hold the task's lock; the sweep decides only once it has it."""
    locks: dict[str, asyncio.Lock] = {}

    def lock(name: str) -> asyncio.Lock:
        return locks.setdefault(name, asyncio.Lock())

    store = MemoryStore()
    make_dir(settings, "t1", age_hours=100)
    sweep = TaskDirSweeper(store, settings, cast(Runtime, StubRuntime()), lock=lock, clock=lambda: NOW)
    async with lock("t1"):
        pending = asyncio.create_task(sweep.sweep())
        await asyncio.sleep(0.05)
        assert not pending.done()
        await add_task(store, "t1", TaskPhase.PREPARING)  # a new task of the same name began meanwhile
    assert await pending == []
    assert (settings.tasks_dir / "t1").is_dir()


async def test_a_real_running_engine_keeps_its_dir(settings: NodeSettings) -> None:
    """With RunP: a deleted task whose engine still runs keeps its dir until the engine has ended."""
    iso = dataclasses.replace(detect_isolation(), bwrap=None, bwrap_problem="not needed here")
    runtime = ProcessRuntime(settings, isolation=iso)
    image = AppImage(
        meta=ObjectMeta(name="sleeper"),
        spec=AppImageSpec(command=[sys.executable, "-c", "import time; time.sleep(60)"]),
    )
    spec = LaunchSpec(
        task="sleepy",
        uid="uid-1",
        domain="alice",
        app_image=image,
        input_config="{}",
        parties=[Party(domain="alice")],
        self_party_index=0,
        ports=[],
        node_api="http://127.0.0.1:1",
        token="t",
    )
    later = time.time() + 100 * HOUR  # every file is old by this clock
    sweep = TaskDirSweeper(MemoryStore(), settings, runtime, clock=lambda: later)
    try:
        assert (await runtime.start(spec)).state is EngineState.RUNNING
        assert await sweep.sweep() == []
        assert runtime.work_dir("sleepy").is_dir()
        await runtime.stop("sleepy", grace=1.0)
        assert await sweep.sweep() == ["sleepy"]
        assert not runtime.work_dir("sleepy").exists()
    finally:
        await runtime.stop("sleepy", grace=0.5)
        await runtime.close()
