"""JobController: drives a Job through its DAG by creating Task objects and judging their phases.

Lifecycle handled here (DESIGN.md section 2, kuscia.md section 3)::

    Initialized --validate--> Pending --first task created--> Running --job_phase--> Succeeded | Failed

- **Initialized.**  The DAG is validated (`validate_job`); a bad one fails the job with reason
  `ValidateFailed` and the validation message.  This foundation runs single-node jobs only: a job with a
  party other than this node's domain fails with reason `CrossDomainUnsupported` (the interop module
  replaces this).  Approval is not asked for: every party is this node.
- **Pending / Running.**  Each reconcile lists the job's tasks (label `accord/job=<job>`), copies their
  phases and messages into `status.task_status` / `task_messages`, asks `job_phase` for a verdict and,
  while work remains, creates the tasks `ready_tasks` returns (named `task_id_of(job, task)`, labelled
  `accord/job` and `accord/task-alias`).  Scheduling decisions are pure functions in
  `scheduling/dag.py`; this module only does the I/O around them.
- **Failed.**  In Strict mode the job fails while other tasks may still run: they are set Failed with a
  message naming the task that failed the job, and the task controller stops their engines.  The same
  sweep runs on every reconcile of a Failed job, so a node that crashed between the two writes finishes
  the job on restart.
- **Deleted.**  A deleted job's tasks are deleted too (their engines are then stopped).  A task deleted
  while its job runs is not created again: the job remembers it in `task_status` and counts it Failed.

The controller re-runs when any of the job's tasks changes: `related` maps Task events to the job named
in their `accord/job` label.  Every write is a CAS through `update_status`, and phase changes are audited
(`actor="controller/job"`).  Several phases may be walked in one reconcile (Initialized -> Pending ->
Running happens in one go); each step is its own write, so a crash between steps resumes at the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import cast

from accord.controllers.queue import Outcome
from accord.controllers.status import update_status
from accord.errors import AlreadyExists, InvalidArgument, NotFound
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, JobTask, ScheduleConfig, Task, TaskSpec
from accord.resources.meta import ObjectMeta, utcnow
from accord.resources.phases import TASK_TERMINAL, JobPhase, TaskPhase
from accord.scheduling.dag import job_phase, ready_tasks, task_id_of, validate_job
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

ACTOR = "controller/job"
JOB_LABEL = "accord/job"
ALIAS_LABEL = "accord/task-alias"

_MAX_STEPS = 8


def tasks_of_job(event: WatchEvent) -> Iterable[str]:
    """Map a Task watch event to the job to reconcile (its `accord/job` label)."""
    labels = event.object.get("meta", {}).get("labels", {}) or {}
    job = labels.get(JOB_LABEL)
    return [job] if job else []


class JobController:
    """Reconciles Jobs; see the module docstring."""

    kind = "Job"

    def __init__(self, store: Store, settings: NodeSettings) -> None:
        self._store = store
        self._settings = settings
        self.related: dict[str, Callable[[WatchEvent], Iterable[str]]] = {"Task": tasks_of_job}
        self._handlers: dict[JobPhase, Callable[[Job], Awaitable[Job | None]]] = {
            JobPhase.INITIALIZED: self._initialize,
            JobPhase.PENDING: self._schedule,
            JobPhase.RUNNING: self._schedule,
            JobPhase.FAILED: self._stop_unfinished_tasks,
        }

    async def reconcile(self, name: str) -> Outcome:
        try:
            job = cast(Job, await self._store.get("Job", name))
        except NotFound:
            await self._delete_tasks(name)
            return Outcome.done()
        for _ in range(_MAX_STEPS):
            handler = self._handlers.get(job.status.phase)
            if handler is None:
                return Outcome.done()
            next_job = await handler(job)
            if next_job is None or next_job.status.phase == job.status.phase:
                return Outcome.done()
            job = next_job
        return Outcome.done()

    # -- phases ---------------------------------------------------------------------------------

    async def _initialize(self, job: Job) -> Job | None:
        local = self._settings.domain
        foreign = [d for d in job.spec.parties() if d != local]
        if foreign:
            return await self._finish(
                job,
                JobPhase.FAILED,
                "CrossDomainUnsupported",
                f"job {job.name!r} involves domain(s) {', '.join(foreign)} besides this node's domain "
                f"{local!r}; cross-domain jobs need the interop module, which this node does not run yet",
                expected=JobPhase.INITIALIZED,
            )
        try:
            validate_job(job.spec)
        except InvalidArgument as exc:
            return await self._finish(
                job, JobPhase.FAILED, "ValidateFailed", exc.message, expected=JobPhase.INITIALIZED
            )

        def to_pending(draft: Job) -> bool:
            if draft.status.phase != JobPhase.INITIALIZED:
                return False
            draft.status.phase = JobPhase.PENDING
            draft.status.reason = ""
            draft.status.message = ""
            return True

        return await update_status(self._store, job, to_pending, actor=ACTOR)

    async def _schedule(self, job: Job) -> Job | None:
        tasks = await self._store.list("Task", selector={JOB_LABEL: job.name})
        aliases = {t.alias for t in job.spec.tasks}
        phases: dict[str, TaskPhase] = {}
        messages: dict[str, str] = {}
        for obj in tasks:
            task = cast(Task, obj)
            alias = task.meta.labels.get(ALIAS_LABEL, task.spec.alias)
            if alias in aliases:
                phases[alias] = task.status.phase
                if task.status.message:
                    messages[alias] = task.status.message
        for alias, recorded in job.status.task_status.items():
            # A task the job created but that is gone was deleted by hand: never run it again.
            if alias in aliases and alias not in phases:
                if recorded in TASK_TERMINAL:
                    phases[alias] = recorded
                    messages[alias] = job.status.task_messages.get(alias, "")
                else:
                    phases[alias] = TaskPhase.FAILED
                    messages[alias] = "the task was deleted before it finished"
        verdict = job_phase(job.spec, phases)
        if verdict.phase is None:
            for template in ready_tasks(job.spec, phases):
                clash = await self._create_task(job, template)
                if clash:
                    return await self._finish(
                        job, JobPhase.FAILED, "TaskCreateFailed", clash, expected=job.status.phase
                    )
                phases[template.alias] = TaskPhase.PENDING

        def sync(draft: Job) -> bool:
            if draft.status.phase not in (JobPhase.PENDING, JobPhase.RUNNING):
                return False
            before = draft.status.model_dump()
            draft.status.task_status = dict(phases)
            draft.status.task_messages = dict(messages)
            now = utcnow()
            if draft.status.phase == JobPhase.PENDING and (phases or verdict.phase is not None):
                # A job passes through Running even if its tasks finished before we looked (a restart
                # between creating the first task and writing Running); the verdict is the next step.
                draft.status.phase = JobPhase.RUNNING
                draft.status.start_time = draft.status.start_time or now
            elif verdict.phase is not None:
                draft.status.phase = verdict.phase
                draft.status.reason = (
                    "TasksSucceeded" if verdict.phase == JobPhase.SUCCEEDED else "TaskFailed"
                )
                draft.status.message = verdict.reason
                draft.status.completion_time = draft.status.completion_time or now
                draft.status.start_time = draft.status.start_time or now
            return draft.status.model_dump() != before

        return await update_status(self._store, job, sync, actor=ACTOR)

    async def _stop_unfinished_tasks(self, job: Job) -> Job | None:
        """Fail the job's unfinished tasks (Strict mode, or a job failed by a command)."""
        tasks = await self._store.list("Task", selector={JOB_LABEL: job.name})
        note = f"stopped: job {job.name!r} failed ({job.status.message or job.status.reason})"
        for obj in tasks:
            task = cast(Task, obj)
            if task.status.phase in TASK_TERMINAL:
                continue

            def stop(draft: Task) -> bool:
                if draft.status.phase in TASK_TERMINAL:
                    return False
                draft.status.phase = TaskPhase.FAILED
                draft.status.message = note
                draft.status.completion_time = utcnow()
                return True

            try:
                await update_status(self._store, task, stop, actor=ACTOR)
            except NotFound:
                continue
        return None

    # -- helpers --------------------------------------------------------------------------------

    async def _finish(
        self, job: Job, phase: JobPhase, reason: str, message: str, *, expected: JobPhase
    ) -> Job | None:
        def finish(draft: Job) -> bool:
            if draft.status.phase != expected:
                return False
            now = utcnow()
            draft.status.phase = phase
            draft.status.reason = reason
            draft.status.message = message
            draft.status.start_time = draft.status.start_time or now
            draft.status.completion_time = now
            return True

        log.info("job %s: %s (%s: %s)", job.name, phase.value, reason, message)
        return await update_status(self._store, job, finish, actor=ACTOR)

    async def _create_task(self, job: Job, template: JobTask) -> str:
        """Create the Task for one ready job task; returns a message if the name belongs to another job."""
        name = task_id_of(job.name, template)
        task = Task(
            meta=ObjectMeta(name=name, labels={JOB_LABEL: job.name, ALIAS_LABEL: template.alias}),
            spec=TaskSpec(
                job=job.name,
                alias=template.alias,
                initiator=job.spec.initiator,
                app_image=template.app_image,
                parties=list(template.parties),
                input_config=template.input_config,
                schedule_config=template.schedule_config or ScheduleConfig(),
            ),
        )
        entry = AuditEntry(
            actor=ACTOR,
            action="create",
            target_kind="Task",
            target_name=name,
            details={"job": job.name, "alias": template.alias, "app_image": template.app_image},
        )
        try:
            await self._store.create(task, audit=entry)
        except AlreadyExists:
            existing = await self._store.get("Task", name)
            owner = existing.meta.labels.get(JOB_LABEL)
            if owner != job.name:
                return (
                    f"cannot create task {name!r} for task {template.alias!r}: a task with that name "
                    f"already exists and belongs to {('job ' + repr(owner)) if owner else 'no job'}"
                )
        return ""

    async def _delete_tasks(self, job_name: str) -> None:
        for task in await self._store.list("Task", selector={JOB_LABEL: job_name}):
            entry = AuditEntry(
                actor=ACTOR,
                action="delete",
                target_kind="Task",
                target_name=task.meta.name,
                details={"job": job_name, "why": "job deleted"},
            )
            try:
                await self._store.delete("Task", task.meta.name, audit=entry)
            except NotFound:
                continue
