"""JobController: drives a Job through approval and its DAG, at the initiator; mirrors it at participants.

**At the initiator** (DESIGN.md section 2, kuscia.md section 3)::

    Initialized --all accepted--> [AwaitingApproval --all approved-->] Pending --> Running
        |  a party refused / silent         | a party rejected                     |
        +--> Failed                         +--> ApprovalReject                    +--> Succeeded | Failed

- **Initialized.**  The DAG is validated (`ValidateFailed`), every other party must be reachable by a
  route (`ValidateFailed`, naming it), then a `JobProposal` goes to every participant that has not
  answered yet (in parallel, retried with backoff).  Each answer is recorded in `approve_status`: an
  accepted proposal as the participant's approval (JobAccepted, or Pending while it awaits a manual
  decision there); a refusal fails the job (`PartyRefused`, with the participant's reasons).  A
  participant that does not answer `proposal_timeout` seconds after the job was created fails it
  (`PartyUnreachable`).  Without a PeerClient a job naming another domain fails (`CrossDomainUnsupported`).
- **AwaitingApproval** until every participant approved (their reports arrive through the inbox and
  change `approve_status`); one rejection ends the job in ApprovalReject with the party's reason.
- **Pending / Running.**  As on a single node: each reconcile lists the job's tasks (label `accord/job`),
  copies their phases into `task_status`, asks `job_phase` for a verdict and creates what `ready_tasks`
  returns (labelled with the job's stage version).  Tasks are multi-party; the task controller runs them.
- **Failed / Suspended / Cancelled** (by a failed critical task or a stage command): unfinished tasks
  are failed with a message naming why, and the task controller stops every party's engine.
- **Restart** (a command): the job is Running again with stage Restart at a new version; tasks created
  under an older version that did not succeed are deleted and created anew by the DAG.
- **Delete** (a command, annotation `accord/deleting`): participants are sent `JobDelete` until they
  acknowledge (or `delete_grace` seconds passed), then the job and its tasks are deleted here.

After every step the initiator sends the job's state (`JobSync`: phase, stage, approvals, task phases)
to every participant holding a mirror whose acknowledged digest (`status.sync[peer]`) differs; a
participant answers with its approval, which also recovers a lost `PartyJobReport`.

**At a participant** the Job is a mirror written by the inbox (`interop/jobs.py`).  The controller
reports this node's approval decision to the initiator until acknowledged, fails local unfinished tasks
once the mirror is Failed / Suspended / Cancelled / ApprovalReject (their engines stop even if the
initiator is unreachable), and deletes local tasks made stale by a restart.  It never creates tasks: the
initiator's task coordinator asks for them (`TaskPrepare`).

The controller re-runs when any of the job's tasks changes (`related`).  Every write is a CAS through
`update_status` with phase changes audited; what to send is derived from the stored status, so a
restarted node (or a lost reply) simply leads to the same message being sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import cast

from accord.controllers.jobpeers import JobMessenger
from accord.controllers.queue import Outcome
from accord.controllers.status import update_status
from accord.errors import AlreadyExists, InvalidArgument, NotFound
from accord.interop.client import PeerClient, SendBook
from accord.interop.commands import DELETED_BY_ANNOTATION, deleting_since
from accord.interop.common import is_mirror, participants, routes_from
from accord.interop.messages import (
    ORIGIN_UID,
    STAGE_VERSION_LABEL,
)
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, JobSpec, JobTask, ScheduleConfig, Task, TaskSpec
from accord.resources.meta import ObjectMeta, utcnow
from accord.resources.phases import (
    JOB_TERMINAL,
    TASK_TERMINAL,
    ApprovalState,
    JobPhase,
    JobStage,
    TaskPhase,
)
from accord.scheduling.dag import job_phase, ready_tasks, task_id_of, validate_job
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

ACTOR = "controller/job"
JOB_LABEL = "accord/job"
ALIAS_LABEL = "accord/task-alias"

_MAX_STEPS = 8
SYNC_GIVE_UP_SECONDS = 600.0
"""Stop syncing a finished job to a participant that has not acknowledged it for this long."""
_STOPPED = {
    JobPhase.FAILED: "failed",
    JobPhase.SUSPENDED: "was suspended",
    JobPhase.CANCELLED: "was cancelled",
    JobPhase.APPROVAL_REJECT: "was rejected",
}

StepResult = Job | float | None
"""A step's result: the job moved (run the next step), a delay to retry after, or nothing to do."""


def tasks_of_job(event: WatchEvent) -> Iterable[str]:
    """Map a Task watch event to the job to reconcile (its `accord/job` label)."""
    labels = event.object.get("meta", {}).get("labels", {}) or {}
    job = labels.get(JOB_LABEL)
    return [job] if job else []


def _stage_version(obj: Task) -> int:
    try:
        return int(obj.meta.labels.get(STAGE_VERSION_LABEL, "0") or 0)
    except ValueError:
        return 0


def _min(*delays: float | None) -> float | None:
    found = [d for d in delays if d is not None]
    return min(found) if found else None


class JobController:
    """Reconciles Jobs; see the module docstring."""

    kind = "Job"

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        *,
        peers: PeerClient | None = None,
        proposal_timeout: float | None = None,
        delete_grace: float = 30.0,
    ) -> None:
        self._store = store
        self._settings = settings
        self.me = settings.domain
        self._peers = peers
        self._proposal_timeout = float(proposal_timeout or settings.task_timeout_seconds)
        self._delete_grace = delete_grace
        self.book = SendBook()
        self._messenger = JobMessenger(store, self.me, peers, self.book) if peers is not None else None
        self.related: dict[str, Callable[[WatchEvent], Iterable[str]]] = {"Task": tasks_of_job}
        self._handlers: dict[JobPhase, Callable[[Job], Awaitable[StepResult]]] = {
            JobPhase.INITIALIZED: self._initialize,
            JobPhase.AWAITING_APPROVAL: self._await_approval,
            JobPhase.PENDING: self._schedule,
            JobPhase.RUNNING: self._schedule,
            JobPhase.FAILED: self._stop_unfinished_tasks,
            JobPhase.SUSPENDED: self._stop_unfinished_tasks,
            JobPhase.CANCELLED: self._stop_unfinished_tasks,
            JobPhase.APPROVAL_REJECT: self._stop_unfinished_tasks,
        }

    async def reconcile(self, name: str) -> Outcome:
        try:
            job = cast(Job, await self._store.get("Job", name))
        except NotFound:
            await self._delete_tasks(name)
            self.book.forget(lambda key: isinstance(key, tuple) and key[0] == name)
            return Outcome.done()
        if is_mirror(job, self.me) and ORIGIN_UID not in job.meta.annotations:
            if job.status.phase not in JOB_TERMINAL:
                await self._finish(
                    job,
                    JobPhase.FAILED,
                    "ValidateFailed",
                    f"the initiator of job {job.name!r} is {job.spec.initiator}, not this node ({self.me}): "
                    "submit a job at its initiator's node",
                )
            return Outcome.done()
        if is_mirror(job, self.me):
            delay = await self._mirror(job)
        elif deleting_since(job) is not None:
            delay = await self._deleting(job)
        else:
            delay = None
            for _ in range(_MAX_STEPS):
                handler = self._handlers.get(job.status.phase)
                result = await handler(job) if handler is not None else None
                if isinstance(result, Job) and result.status.phase != job.status.phase:
                    job = result
                    continue
                if isinstance(result, float | int):
                    delay = float(result)
                break
            if self._messenger is not None and not self._long_finished(job):
                delay = _min(delay, await self._messenger.sync(job))
        return Outcome.retry(max(0.01, delay)) if delay is not None else Outcome.done()

    # -- initiator: phases -----------------------------------------------------------------------------

    async def _initialize(self, job: Job) -> StepResult:
        foreign = participants(job.spec, self.me)
        if foreign and self._peers is None:
            return await self._finish(
                job,
                JobPhase.FAILED,
                "CrossDomainUnsupported",
                f"job {job.name!r} involves domain(s) {', '.join(foreign)} besides this node's domain "
                f"{self.me!r}; cross-domain jobs need the interop module, which this node does not run",
            )
        try:
            validate_job(job.spec)
        except InvalidArgument as exc:
            return await self._finish(job, JobPhase.FAILED, "ValidateFailed", exc.message)
        if not foreign:
            return await self._decide_approval(job)
        routes = await routes_from(self._store, self.me)
        missing = [p for p in foreign if p not in routes]
        if missing:
            return await self._finish(
                job,
                JobPhase.FAILED,
                "ValidateFailed",
                f"no route from {self.me} to {', '.join(missing)}: add one with "
                f"`accord route add --to {missing[0]} --endpoint https://HOST:PORT`",
            )
        todo = [p for p in foreign if p not in job.status.approve_status]
        due = [p for p in todo if self.book.due((job.name, p))]
        if due:
            job = await self._propose(job, due)
            if job.status.phase != JobPhase.INITIALIZED:
                return job
        if all(p in job.status.approve_status for p in foreign):
            return await self._decide_approval(job)
        waiting = [p for p in foreign if p not in job.status.approve_status]
        age = (utcnow() - (job.meta.created_at or utcnow())).total_seconds()
        if age >= self._proposal_timeout:
            detail = "; ".join(f"{p}: {self.book.last_error((job.name, p)) or 'no answer'}" for p in waiting)
            return await self._finish(
                job,
                JobPhase.FAILED,
                "PartyUnreachable",
                f"no answer to the job proposal within {self._proposal_timeout:g} s from {detail}",
            )
        backoff = self.book.wait([(job.name, p) for p in waiting])
        return min(backoff if backoff is not None else 1.0, self._proposal_timeout - age)

    async def _propose(self, job: Job, peers: list[str]) -> Job:
        assert self._messenger is not None
        accepted, refused = await self._messenger.propose(job, peers)
        if refused:
            return await self._finish(job, JobPhase.FAILED, "PartyRefused", "; ".join(refused))
        if not accepted:
            return job

        def record(draft: Job) -> bool:
            if draft.status.phase != JobPhase.INITIALIZED:
                return False
            draft.status.approve_status.setdefault(self.me, ApprovalState.ACCEPTED)
            draft.status.approve_messages.setdefault(self.me, f"submitted at {self.me}")
            for peer, (approval, reason) in accepted.items():
                if draft.status.approve_status.get(peer, ApprovalState.PENDING) == ApprovalState.PENDING:
                    draft.status.approve_status[peer] = approval
                    draft.status.approve_messages[peer] = reason
            return True

        return await update_status(self._store, job, record, actor=ACTOR)

    async def _decide_approval(self, job: Job) -> StepResult:
        states = {p: job.status.approve_status.get(p) for p in participants(job.spec, self.me)}
        rejected = [p for p, s in states.items() if s == ApprovalState.REJECTED]
        expected = job.status.phase
        if rejected:
            reasons = "; ".join(
                job.status.approve_messages.get(p) or f"{p} rejected the job" for p in rejected
            )
            return await self._finish(job, JobPhase.APPROVAL_REJECT, "ApprovalRejected", reasons)
        if any(s != ApprovalState.ACCEPTED for s in states.values()):
            if expected == JobPhase.AWAITING_APPROVAL:
                return None
            target = JobPhase.AWAITING_APPROVAL
        else:
            target = JobPhase.PENDING

        def advance(draft: Job) -> bool:
            if draft.status.phase != expected:
                return False
            draft.status.phase = target
            draft.status.reason = ""
            waiting = [p for p, s in states.items() if s != ApprovalState.ACCEPTED]
            draft.status.message = f"awaiting approval by {', '.join(waiting)}" if waiting else ""
            draft.status.approve_status.setdefault(self.me, ApprovalState.ACCEPTED)
            return True

        return await update_status(self._store, job, advance, actor=ACTOR)

    async def _await_approval(self, job: Job) -> StepResult:
        return await self._decide_approval(job)

    async def _schedule(self, job: Job) -> StepResult:
        tasks = [cast(Task, t) for t in await self._store.list("Task", selector={JOB_LABEL: job.name})]
        tasks = await self._drop_stale_tasks(job, tasks)
        aliases = {t.alias for t in job.spec.tasks}
        phases: dict[str, TaskPhase] = {}
        messages: dict[str, str] = {}
        for task in tasks:
            alias = task.meta.labels.get(ALIAS_LABEL, task.spec.alias)
            if alias in aliases:
                phases[alias] = task.status.phase
                # Only final messages: progress lines would rewrite (and re-sync) the job at every step.
                if task.status.message and task.status.phase in TASK_TERMINAL:
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
                    return await self._finish(job, JobPhase.FAILED, "TaskCreateFailed", clash)
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
                draft.status.message = _with_causes(verdict.reason, job.spec, phases, messages)
                draft.status.completion_time = draft.status.completion_time or now
                draft.status.start_time = draft.status.start_time or now
            return draft.status.model_dump() != before

        return await update_status(self._store, job, sync, actor=ACTOR)

    async def _drop_stale_tasks(self, job: Job, tasks: list[Task]) -> list[Task]:
        """After a restart (stage Restart vN), tasks from before it that did not succeed are deleted."""
        stage = job.status.stage
        if stage.stage != JobStage.RESTART or job.status.phase != JobPhase.RUNNING:
            return tasks
        kept: list[Task] = []
        for task in tasks:
            if _stage_version(task) < stage.version and task.status.phase != TaskPhase.SUCCEEDED:
                await self._delete_task(task.meta.name, job.name, f"replaced by restart v{stage.version}")
            else:
                kept.append(task)
        return kept

    async def _stop_unfinished_tasks(self, job: Job) -> StepResult:
        """Fail the job's unfinished tasks (Strict mode, a stop/suspend/cancel command, a rejection)."""
        tasks = await self._store.list("Task", selector={JOB_LABEL: job.name})
        verb = _STOPPED.get(job.status.phase, "ended")
        note = f"stopped: job {job.name!r} {verb} ({job.status.message or job.status.reason})"
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

    async def _deleting(self, job: Job) -> float | None:
        await self._stop_unfinished_tasks(job)
        since = deleting_since(job) or utcnow()
        if self._messenger is not None:
            if utcnow() - since < timedelta(seconds=self._delete_grace):
                pending = await self._messenger.tell_deleted(job)
                if pending is not None:
                    return pending
            else:
                log.warning("job %s: deleting it without word from every participant", job.name)
        by = job.meta.annotations.get(DELETED_BY_ANNOTATION, "")
        try:
            await self._store.delete(
                "Job",
                job.name,
                audit=AuditEntry(
                    actor=ACTOR, action="delete", target_kind="Job", target_name=job.name, details={"by": by}
                ),
            )
        except NotFound:
            pass
        await self._delete_tasks(job.name)
        return None

    # -- participant --------------------------------------------------------------------------------------

    async def _mirror(self, job: Job) -> float | None:
        delay = await self._messenger.report_approval(job) if self._messenger is not None else None
        if job.status.phase in _STOPPED:
            await self._stop_unfinished_tasks(job)
        elif job.status.phase == JobPhase.RUNNING:
            tasks = [cast(Task, t) for t in await self._store.list("Task", selector={JOB_LABEL: job.name})]
            await self._drop_stale_tasks(job, tasks)
        return delay

    # -- helpers ------------------------------------------------------------------------------------------

    def _long_finished(self, job: Job) -> bool:
        """A job that ended long ago: a participant that still has not heard of it will not, from us."""
        done = job.status.completion_time
        if job.status.phase not in JOB_TERMINAL or done is None:
            return False
        return utcnow() - done > timedelta(seconds=SYNC_GIVE_UP_SECONDS)

    async def _finish(self, job: Job, phase: JobPhase, reason: str, message: str) -> Job:
        expected = job.status.phase

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
        config = template.schedule_config or ScheduleConfig(
            task_timeout_seconds=self._settings.task_timeout_seconds
        )
        labels = {JOB_LABEL: job.name, ALIAS_LABEL: template.alias}
        if job.status.stage.version:  # no label = version 0 (a job never commanded)
            labels[STAGE_VERSION_LABEL] = str(job.status.stage.version)
        task = Task(
            meta=ObjectMeta(name=name, labels=labels),
            spec=TaskSpec(
                job=job.name,
                alias=template.alias,
                initiator=job.spec.initiator,
                app_image=template.app_image,
                parties=list(template.parties),
                input_config=template.input_config,
                schedule_config=config,
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

    async def _delete_task(self, name: str, job_name: str, why: str) -> None:
        entry = AuditEntry(
            actor=ACTOR,
            action="delete",
            target_kind="Task",
            target_name=name,
            details={"job": job_name, "why": why},
        )
        try:
            await self._store.delete("Task", name, audit=entry)
        except NotFound:
            return

    async def _delete_tasks(self, job_name: str) -> None:
        for task in await self._store.list("Task", selector={JOB_LABEL: job_name}):
            await self._delete_task(task.meta.name, job_name, "job deleted")


def _with_causes(reason: str, spec: JobSpec, phases: dict[str, TaskPhase], messages: dict[str, str]) -> str:
    """The verdict plus why each failed critical task failed, so a user sees the party and the cause
    (e.g. "critical task 'psi' failed: party bob: engine exited with code 4: peer alice stopped ...")
    in the job itself instead of hunting through tasks (Kuscia's opaque-error pain point)."""
    causes = [
        f"{t.alias}: {messages[t.alias]}"
        for t in spec.tasks
        if not t.tolerable and phases.get(t.alias) == TaskPhase.FAILED and messages.get(t.alias)
    ]
    if not causes:
        return reason
    return f"{reason} ({'; '.join(causes)})"
