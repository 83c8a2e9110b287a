"""TaskController: runs this node's party of each Task through the runtime and records what happened.

Lifecycle (DESIGN.md section 2)::

    Pending --ports allocated--> Preparing --engine launched--> Running --engine ended--> Succeeded | Failed

- **Pending.**  The task's AppImage is looked up in the store (the node creates the built-in ones at
  start); an unknown one fails the task with a message naming it.  The runtime allocates one port per
  AppImage port; ports, endpoints and the work dir are written to the status (phase Preparing).
- **Preparing.**  A one-time token is generated and its SHA-256 stored in the annotation
  `accord/task-token-sha256` *before* the engine starts (the plaintext goes only to the engine), then the
  runtime renders the config templates and launches the engine.  The pid, work dir and start time are
  recorded (phase Running).  If the node dies between the launch and that write, the next reconcile
  finds the engine through `runtime.poll` and adopts it instead of starting a second one.
- **Running.**  The runtime is polled every `poll_interval` seconds (and on every change of the task).
  Exit code 0 -> Succeeded; otherwise Failed with "engine exited with code N" or "engine crashed (killed by
  signal SIGKILL)", plus the tail of the engine log.  An engine that neither runs nor left an exit status
  (e.g. killed with its launcher while the node was down) -> Failed, "engine lost while the node was down".
- **Succeeded / Failed.**  If the engine still runs (the job controller failed the task because the job
  failed), it is stopped.  Port reservations are released.
- **Deleted.**  A deleted task whose engine still runs has it stopped.  `extra_names` lists engines still
  running on disk, so a task deleted while the node was down is cleaned up at the next start.

Restart safety comes from the runtime's on-disk records (see `runtimes/process.py`): nothing here keeps
state in memory that a restarted node would need.

This foundation runs single-node tasks: every party must be this node's domain, once.  A task naming
another domain fails with a message saying cross-domain tasks need the interop module.

`record_progress` is what the node's API calls when an engine reports progress with its token.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import cast

from accord.controllers.queue import Outcome
from accord.controllers.status import update_status
from accord.errors import AccordError, Conflict, ErrorCode, NotFound, Unauthenticated, invalid
from accord.resources.appimage import AppImage
from accord.resources.job import PartyStatus, Task
from accord.resources.meta import utcnow
from accord.resources.phases import TASK_TERMINAL, TaskPhase
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec, Runtime
from accord.runtimes.contract import TOKEN_ANNOTATION, party_endpoints, token_sha256
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

ACTOR = "controller/task"
_MAX_STEPS = 6
_MAX_PROGRESS_MESSAGE = 1000

Step = Callable[[Task], Awaitable["Task | Outcome"]]


class TaskController:
    """Reconciles Tasks whose engines run on this node; see the module docstring."""

    kind = "Task"

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        runtime: Runtime,
        *,
        poll_interval: float = 0.5,
        stop_grace: float = 5.0,
    ) -> None:
        self._store = store
        self._settings = settings
        self._runtime = runtime
        self._poll_interval = poll_interval
        self._stop_grace = stop_grace
        self._handlers: dict[TaskPhase, Step] = {
            TaskPhase.PENDING: self._prepare,
            TaskPhase.PREPARING: self._launch,
            TaskPhase.RUNNING: self._watch,
            TaskPhase.SUCCEEDED: self._cleanup,
            TaskPhase.FAILED: self._cleanup,
        }

    async def extra_names(self) -> list[str]:
        """Tasks whose engines still run (maybe deleted while the node was down)."""
        return await self._runtime.running_tasks()

    async def reconcile(self, name: str) -> Outcome:
        try:
            task = cast(Task, await self._store.get("Task", name))
        except NotFound:
            await self._stop_orphan(name)
            return Outcome.done()
        for _ in range(_MAX_STEPS):
            result = await self._handlers[task.status.phase](task)
            if isinstance(result, Outcome):
                return result
            if result.status.phase == task.status.phase:
                return Outcome.done()
            task = result
        return Outcome.done()

    # -- phases ---------------------------------------------------------------------------------

    def _local_party(self, task: Task) -> tuple[int, str]:
        """(index of this node's party, "") or (-1, why this node cannot run the task)."""
        local = self._settings.domain
        indices = [i for i, p in enumerate(task.spec.parties) if p.domain == local]
        foreign = sorted({p.domain for p in task.spec.parties if p.domain != local})
        if foreign:
            return -1, (
                f"task involves domain(s) {', '.join(foreign)} besides this node's domain {local!r}; "
                "cross-domain tasks need the interop module, which this node does not run yet"
            )
        if len(indices) > 1:
            roles = ", ".join(repr(task.spec.parties[i].role) for i in indices)
            return -1, (
                f"domain {local!r} takes part {len(indices)} times (roles {roles}); running several "
                "parties of one domain in one task is not supported yet"
            )
        return indices[0], ""

    async def _app_image(self, task: Task) -> AppImage | str:
        try:
            return cast(AppImage, await self._store.get("AppImage", task.spec.app_image))
        except NotFound:
            return (
                f"AppImage {task.spec.app_image!r} not found; create it first "
                "(`accord get appimages` lists the known ones)"
            )

    async def _prepare(self, task: Task) -> Task | Outcome:
        index, problem = self._local_party(task)
        if problem:
            return await self._fail(task, problem)
        app = await self._app_image(task)
        if isinstance(app, str):
            return await self._fail(task, app)
        try:
            ports = await self._runtime.allocate_ports(task.name, app.spec.ports)
        except AccordError as exc:
            return await self._fail(task, f"cannot allocate ports: {exc.message}")
        work_dir = str(self._runtime.work_dir(task.name))
        parties = [
            PartyStatus(
                domain=p.domain,
                role=p.role,
                phase=TaskPhase.PREPARING if i == index else TaskPhase.PENDING,
                endpoints=party_endpoints(task.name, p, app.spec.ports, ports, is_self=i == index),
            )
            for i, p in enumerate(task.spec.parties)
        ]

        def to_preparing(draft: Task) -> bool:
            if draft.status.phase != TaskPhase.PENDING:
                return False
            draft.status.phase = TaskPhase.PREPARING
            draft.status.allocated_ports = list(ports)
            draft.status.parties = parties
            draft.status.work_dir = work_dir
            draft.status.message = ""
            return True

        return await update_status(self._store, task, to_preparing, actor=ACTOR)

    async def _launch(self, task: Task) -> Task | Outcome:
        current = await self._runtime.poll(task.name, task.meta.uid)
        if current.state is not EngineState.NOT_STARTED:
            log.info("task %s: adopting engine started before (%s)", task.name, current.describe())
            return await self._to_running(task, current)
        index, problem = self._local_party(task)
        if problem:
            return await self._fail(task, problem)
        app = await self._app_image(task)
        if isinstance(app, str):
            return await self._fail(task, app)
        token = secrets.token_urlsafe(32)
        digest = token_sha256(token)

        def remember_token(draft: Task) -> bool:
            if draft.status.phase != TaskPhase.PREPARING:
                return False
            draft.meta.annotations[TOKEN_ANNOTATION] = digest
            return True

        task = await update_status(self._store, task, remember_token, actor=ACTOR)
        if task.status.phase != TaskPhase.PREPARING:
            return task
        launch = LaunchSpec(
            task=task.name,
            uid=task.meta.uid,
            domain=self._settings.domain,
            app_image=app,
            input_config=task.spec.input_config,
            parties=list(task.spec.parties),
            self_party_index=index,
            ports=list(task.status.allocated_ports),
            node_api=self._settings.api_url,
            token=token,
        )
        try:
            started = await self._runtime.start(launch)
        except (AccordError, OSError) as exc:
            reason = exc.message if isinstance(exc, AccordError) else str(exc)
            return await self._fail(task, f"engine could not start: {reason}")
        return await self._to_running(task, started)

    async def _to_running(self, task: Task, engine: EngineStatus) -> Task:
        def to_running(draft: Task) -> bool:
            if draft.status.phase != TaskPhase.PREPARING:
                return False
            draft.status.phase = TaskPhase.RUNNING
            draft.status.pid = engine.pid
            draft.status.work_dir = engine.work_dir or draft.status.work_dir
            draft.status.start_time = draft.status.start_time or utcnow()
            draft.status.message = ""
            for party in draft.status.parties:
                if party.domain == self._settings.domain:
                    party.phase = TaskPhase.RUNNING
            return True

        return await update_status(self._store, task, to_running, actor=ACTOR)

    async def _watch(self, task: Task) -> Task | Outcome:
        engine = await self._runtime.poll(task.name, task.meta.uid)
        if engine.state is EngineState.RUNNING:
            return Outcome.retry(self._poll_interval)
        if engine.state is EngineState.NOT_STARTED:
            engine = EngineStatus(EngineState.LOST, detail="the runtime has no record of the engine")
        finished = await self._finish(task, engine)
        await self._runtime.release(task.name)
        return finished

    async def _cleanup(self, task: Task) -> Task | Outcome:
        engine = await self._runtime.poll(task.name, task.meta.uid)
        if engine.state is EngineState.RUNNING:
            log.info("task %s is %s but its engine runs: stopping it", task.name, task.status.phase.value)
            await self._runtime.stop(task.name, self._stop_grace, task.meta.uid)
        await self._runtime.release(task.name)
        return Outcome.done()

    async def _stop_orphan(self, name: str) -> None:
        engine = await self._runtime.poll(name)
        if engine.state is EngineState.RUNNING:
            log.info("task %s was deleted but its engine runs: stopping it", name)
            await self._runtime.stop(name, self._stop_grace)
        await self._runtime.release(name)

    # -- writes ---------------------------------------------------------------------------------

    async def _finish(self, task: Task, engine: EngineStatus) -> Task:
        phase = TaskPhase.SUCCEEDED if engine.succeeded else TaskPhase.FAILED
        message = engine.describe()

        def finish(draft: Task) -> bool:
            if draft.status.phase in TASK_TERMINAL:
                return False
            draft.status.phase = phase
            draft.status.message = message
            draft.status.completion_time = utcnow()
            if phase == TaskPhase.SUCCEEDED:
                draft.status.progress = 1.0
            for party in draft.status.parties:
                if party.domain == self._settings.domain:
                    party.phase = phase
                    party.exit_code = engine.exit_code
                    party.crashed = engine.crashed
                    party.message = message
            return True

        log.info("task %s: %s (%s)", task.name, phase.value, message)
        return await update_status(self._store, task, finish, actor=ACTOR)

    async def _fail(self, task: Task, message: str) -> Task:
        def fail(draft: Task) -> bool:
            if draft.status.phase in TASK_TERMINAL:
                return False
            draft.status.phase = TaskPhase.FAILED
            draft.status.message = message
            draft.status.completion_time = utcnow()
            for party in draft.status.parties:
                if party.domain == self._settings.domain:
                    party.phase = TaskPhase.FAILED
                    party.message = message
            return True

        log.info("task %s: Failed (%s)", task.name, message)
        await self._runtime.release(task.name)
        return await update_status(self._store, task, fail, actor=ACTOR)


async def record_progress(store: Store, task_name: str, token: str, progress: float, message: str) -> Task:
    """Record an engine's progress report; the token must be the one given to the task's engine.

    Raises `NotFound` for an unknown task, `Unauthenticated` for a wrong token, `InvalidArgument` for a
    progress outside [0, 1], and `Conflict` once the task has finished.
    """
    task = cast(Task, await store.get("Task", task_name))
    expected = task.meta.annotations.get(TOKEN_ANNOTATION, "")
    if not expected or not token or not hmac.compare_digest(expected, token_sha256(token)):
        raise Unauthenticated(f"the token is not valid for task {task_name!r}")
    if not isinstance(progress, int | float) or math.isnan(progress) or not 0.0 <= progress <= 1.0:
        raise invalid("Task", f"progress must be a number from 0 to 1, got {progress!r}")
    if task.status.phase in TASK_TERMINAL:
        raise Conflict(
            f"task {task_name!r} already finished ({task.status.phase.value}); "
            "progress is no longer recorded",
            code=ErrorCode.TASK_INVALID,
        )
    text = message[:_MAX_PROGRESS_MESSAGE]

    def apply(draft: Task) -> bool:
        if draft.status.phase in TASK_TERMINAL:
            return False
        changed = draft.status.progress != progress or (bool(text) and draft.status.message != text)
        draft.status.progress = float(progress)
        if text:
            draft.status.message = text
        return changed

    return await update_status(store, task, apply, actor="engine/" + task_name)
