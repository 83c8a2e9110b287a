"""TaskDirSweeper: removes the work dirs of finished tasks once `task_retention_hours` have passed.

Why: every task leaves `<settings.tasks_dir>/<task>/` behind (engine log, results, the sandbox's
records; layout in `runtimes/process.py`), and nothing else ever removes it, so a busy node fills its
disk.  The sweep runs every `task_sweep_seconds` (0 retention = keep forever: the daemon does not run
it) and removes a directory only when all of these hold:

- it is a real directory named like a task (a link or a stray file in the tasks dir is left alone);
- it is *old*: the latest of its own mtime, its engine log's mtime and the Task's `completion_time` is
  more than the retention ago (the latest, so a dir is never removed early whichever clock is right);
- its task is *finished*: the Task is Succeeded or Failed, or no longer exists;
- its engine does *not run*: the runtime's `poll` (from its on-disk records, so an engine adopted
  after a restart counts too) says anything but Running.  `poll` also lets the runtime clean up the
  ended sandbox's remains (bridges, cgroups) before the files go.

The checks and the removal run under the task's own lock (`LocalParty.lock`), the one `prepare` and
`start` hold, so a new task of the same name cannot begin in a directory being removed.  Removal never
follows links (`taskfiles.remove_task_dir`): the engine had write access inside.  Each removal is
logged at INFO and recorded as an AuditRecord (`task_dir.remove`).  A failure is logged and retried at
the next sweep; the sweep itself never ends the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from accord.errors import NotFound
from accord.names import DNS_LABEL
from accord.resources.audit import AuditEntry
from accord.resources.job import Task
from accord.resources.phases import TASK_TERMINAL
from accord.runtimes.base import EngineState, Runtime
from accord.runtimes.records import LOG_FILE
from accord.runtimes.taskfiles import remove_task_dir
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

ACTOR = "controller/retention"
ACTION = "task_dir.remove"


class TaskDirSweeper:
    """See the module docstring.  `run()` is a node module (it runs until cancelled)."""

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        runtime: Runtime,
        *,
        lock: Callable[[str], asyncio.Lock] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`lock(task)`: the lock that the task's prepare/start hold (default: one of the sweeper's own)."""
        self._store = store
        self._runtime = runtime
        self._root = settings.tasks_dir
        self._retention = settings.task_retention_hours * 3600.0
        self._interval = settings.task_sweep_seconds
        self._own_locks: dict[str, asyncio.Lock] = {}
        self._lock = lock or (lambda name: self._own_locks.setdefault(name, asyncio.Lock()))
        self._clock = clock

    async def run(self) -> None:
        if self._retention <= 0:
            log.info("task work dirs are kept forever (task_retention_hours = 0)")
            await asyncio.Event().wait()
        while True:
            try:
                await self.sweep()
            except Exception:  # the next sweep tries again; the node goes on
                log.exception("the task work dir sweep failed")
            await asyncio.sleep(self._interval)

    async def sweep(self) -> list[str]:
        """One pass over the tasks dir; returns the names of the task dirs removed."""
        if self._retention <= 0:
            return []
        removed = []
        for name in await asyncio.to_thread(self._expired_candidates):
            try:
                if await self._sweep_one(name):
                    removed.append(name)
            except Exception as exc:
                log.warning("task %s: cannot remove its work dir (will retry): %r", name, exc)
        return removed

    # -- internals ----------------------------------------------------------------------------------

    def _age_reference(self, path: Path) -> float | None:
        """The latest mtime of the dir and its log, or None unless `path` is a real directory."""
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISDIR(info.st_mode):
            return None
        latest = info.st_mtime
        with contextlib.suppress(OSError):
            latest = max(latest, os.lstat(path / LOG_FILE).st_mtime)
        return latest

    def _expired_candidates(self) -> list[str]:
        """Task dirs whose files are older than the retention (blocking: run in a thread)."""
        try:
            entries = sorted(os.listdir(self._root))
        except FileNotFoundError:
            return []
        cutoff = self._clock() - self._retention
        out = []
        for name in entries:
            if not DNS_LABEL.match(name):
                continue
            latest = self._age_reference(self._root / name)
            if latest is not None and latest < cutoff:
                out.append(name)
        return out

    async def _locked(self, name: str) -> asyncio.Lock:
        """The task's lock, acquired; retried if the party dropped it (a deleted task) meanwhile."""
        while True:
            lock = self._lock(name)
            await lock.acquire()
            if self._lock(name) is lock:
                return lock
            lock.release()

    async def _sweep_one(self, name: str) -> bool:
        lock = await self._locked(name)
        try:
            return await self._remove_if_expired(name)
        finally:
            lock.release()

    async def _remove_if_expired(self, name: str) -> bool:
        path = self._root / name
        now = self._clock()
        latest = await asyncio.to_thread(self._age_reference, path)
        if latest is None or now - latest < self._retention:
            return False  # gone, replaced by a link, or written to since it was listed
        try:
            task: Task | None = cast(Task, await self._store.get("Task", name))
        except NotFound:
            task = None
        if task is not None:
            if task.status.phase not in TASK_TERMINAL:
                return False
            if task.status.completion_time is not None:
                latest = max(latest, task.status.completion_time.timestamp())
                if now - latest < self._retention:
                    return False
        engine = await self._runtime.poll(name)
        if engine.state is EngineState.RUNNING:
            return False
        await asyncio.to_thread(remove_task_dir, path)
        why = f"task {task.status.phase}" if task is not None else "task no longer exists"
        age_hours = round((now - latest) / 3600.0, 2)
        log.info("task %s: removed its work dir %s (%s; untouched for %.2f h)", name, path, why, age_hours)
        await self._store.append_audit(
            AuditEntry(
                actor=ACTOR,
                action=ACTION,
                target_kind="Task",
                target_name=name,
                details={"path": str(path), "reason": why, "age_hours": age_hours},
            )
        )
        return True
