"""LogService: a task's engine log, read once or followed until the task ends.

The runtime writes each task's engine output to `<tasks_dir>/<task>/engine.log`; logs stay on disk after
the process is gone, so a user can read them long after the task ended (Kuscia issue #687).

Following is a poll loop over the file rather than inotify: it works the same on every platform and on
network file systems, and the poll interval (`FOLLOW_POLL_SECONDS`) bounds the delay.  A follow
ends when the Task reaches a terminal phase (or is deleted); the file is drained once more *after* the
terminal phase is seen, so the last lines an engine wrote before exiting are never lost.  Reads are
incremental UTF-8 decodes, so a multi-byte character split across two reads is not mangled.

The task name is checked as a DNS label before it touches the file system, so a name such as
`../../etc` can never escape the tasks directory.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from accord.errors import ErrorCode, InvalidArgument, NotFound
from accord.names import check_dns_label
from accord.resources.job import Task
from accord.resources.phases import TASK_TERMINAL
from accord.settings import NodeSettings
from accord.store.base import Store

LOG_FILE = "engine.log"
CHUNK_BYTES = 64 * 1024
FOLLOW_POLL_SECONDS = 0.25


class LogService:
    def __init__(self, store: Store, settings: NodeSettings, *, poll_seconds: float | None = None) -> None:
        self._store = store
        self._settings = settings
        self._poll = poll_seconds if poll_seconds is not None else FOLLOW_POLL_SECONDS

    def log_path(self, task: str) -> Path:
        try:
            check_dns_label(task, "task name")
        except ValueError as exc:
            raise InvalidArgument(str(exc), code=ErrorCode.TASK_INVALID) from exc
        return self._settings.tasks_dir / task / LOG_FILE

    async def stream(self, task: str, *, follow: bool = False) -> AsyncIterator[str]:
        """Check the task exists (NotFound, before anything streams), then return its log chunks."""
        path = self.log_path(task)
        obj = await self._store.get("Task", task)
        if isinstance(obj, Task) and obj.status.phase in TASK_TERMINAL and not path.parent.exists():
            hours = self._settings.task_retention_hours
            raise NotFound(
                f"task {task!r} has no log here: its work dir does not exist (its engine never started "
                f"on {self._settings.domain}, or the dir was removed {hours:g} h after the task finished: "
                "task_retention_hours)",
                code=ErrorCode.TASK_NOT_FOUND,
            )
        return self._chunks(task, path, follow)

    async def read(self, task: str) -> str:
        """The whole log as it is now ('' while the engine has not written anything)."""
        return "".join([chunk async for chunk in await self.stream(task)])

    async def _chunks(self, task: str, path: Path, follow: bool) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        handle: BinaryIO | None = None
        try:
            while True:
                if handle is None and path.exists():
                    handle = path.open("rb")
                data = handle.read(CHUNK_BYTES) if handle is not None else b""
                if data:
                    text = decoder.decode(data)
                    if text:
                        yield text
                    continue
                if not follow or await self._task_finished(task):
                    if handle is None and path.exists():
                        handle = path.open("rb")
                    if handle is not None:  # drain what was written before the task ended
                        while data := handle.read(CHUNK_BYTES):
                            if text := decoder.decode(data):
                                yield text
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield tail
                    return
                await asyncio.sleep(self._poll)
        finally:
            if handle is not None:
                handle.close()

    async def _task_finished(self, task: str) -> bool:
        try:
            obj = await self._store.get("Task", task)
        except NotFound:
            return True
        return isinstance(obj, Task) and obj.status.phase in TASK_TERMINAL
