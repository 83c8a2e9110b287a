"""Stage commands and approval decisions: the rules every party applies the same way.

`apply_command` runs at the job's initiator, whoever issued the command (the initiator's own user through
`services/jobs.py`, or a participant's user through a `JobCommandRequest`), so a command behaves the same
wherever it is issued.  Kuscia's guards live here and nowhere else: only a Running job can be suspended
(11210); only a Failed or Suspended job restarted (11211); a Succeeded, Cancelled or rejected job cannot
be stopped or cancelled (11207); stopping a Failed job or cancelling a Cancelled one changes nothing.
Every accepted command increments the stage version (`status.stage`), which is how participants tell a
newer command from an older one.  Delete marks the job (annotation `accord/deleting`) and cancels it if
it still runs; the job controller then tells every participant and removes the job.

`record_approval` is a participant's own decision on a job awaiting its approval; its job controller
reports it to the initiator.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

from accord.errors import Conflict, ErrorCode, InvalidArgument
from accord.interop.common import is_mirror, update_object
from accord.interop.messages import JobCommand
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, StageCommand
from accord.resources.meta import utcnow
from accord.resources.phases import JOB_TERMINAL, ApprovalState, JobPhase, JobStage, TaskPhase
from accord.scheduling.transitions import check_job_transition
from accord.store.base import Store

log = logging.getLogger(__name__)

DELETING_ANNOTATION = "accord/deleting"
"""On the initiator's Job: deletion was requested at this time (ISO); participants are told, then it goes."""
DELETED_BY_ANNOTATION = "accord/deleted-by"

_STAGE_OF: dict[JobCommand, JobStage] = {
    JobCommand.STOP: JobStage.STOP,
    JobCommand.SUSPEND: JobStage.SUSPEND,
    JobCommand.RESTART: JobStage.RESTART,
    JobCommand.CANCEL: JobStage.CANCEL,
    JobCommand.DELETE: JobStage.CANCEL,
}


def _check_commandable(job: Job, command: JobCommand) -> bool:
    """Kuscia's guards; False when the command is already in effect (idempotent repeat)."""
    phase = job.status.phase
    name = job.meta.name
    if command is JobCommand.SUSPEND and phase != JobPhase.RUNNING:
        raise Conflict(
            f"job {name!r} is {phase.value}: only a Running job can be suspended",
            code=ErrorCode.JOB_SUSPEND_NOT_RUNNING,
        )
    if command is JobCommand.RESTART and phase not in (JobPhase.FAILED, JobPhase.SUSPENDED):
        raise Conflict(
            f"job {name!r} is {phase.value}: only a Failed or Suspended job can be restarted",
            code=ErrorCode.JOB_RESTART_NOT_FAILED_OR_SUSPENDED,
        )
    if command is JobCommand.STOP and phase == JobPhase.FAILED:
        return False
    if command is JobCommand.CANCEL and phase == JobPhase.CANCELLED:
        return False
    finished = JOB_TERMINAL - ({JobPhase.FAILED} if command is JobCommand.CANCEL else set())
    if command in (JobCommand.STOP, JobCommand.CANCEL) and phase in finished:
        verb = "stopped" if command is JobCommand.STOP else "cancelled"
        raise Conflict(
            f"job {name!r} already finished ({phase.value}); it cannot be {verb}",
            code=ErrorCode.JOB_STAGE_INVALID,
        )
    return True


async def apply_command(
    store: Store, me: str, name: str, command: JobCommand, *, trigger: str, reason: str = ""
) -> Job:
    """Apply a stage command at the initiator (guards, new stage version, phase); returns the job."""
    job = cast(Job, await store.get("Job", name))
    if is_mirror(job, me):
        raise InvalidArgument(f"job {name!r} is initiated by {job.spec.initiator}: send the command there")
    by = f"{trigger}" + (f": {reason}" if reason else "")

    def mutate(draft: Job) -> bool:
        if command is JobCommand.DELETE:
            if DELETING_ANNOTATION in draft.meta.annotations:
                return False
            draft.meta.annotations[DELETING_ANNOTATION] = utcnow().isoformat()
            draft.meta.annotations[DELETED_BY_ANNOTATION] = trigger
            target = None if draft.status.phase in JOB_TERMINAL else JobPhase.CANCELLED
            verb = "deleted"
        else:
            if not _check_commandable(draft, command):
                return False
            target = {
                JobCommand.STOP: JobPhase.FAILED,
                JobCommand.SUSPEND: JobPhase.SUSPENDED,
                JobCommand.RESTART: JobPhase.RUNNING,
                JobCommand.CANCEL: JobPhase.CANCELLED,
            }[command]
            verb = {
                JobCommand.STOP: "stopped",
                JobCommand.SUSPEND: "suspended",
                JobCommand.RESTART: "restarted",
                JobCommand.CANCEL: "cancelled",
            }[command]
        s = draft.status
        s.stage = StageCommand(stage=_STAGE_OF[command], version=s.stage.version + 1, trigger=trigger)
        if target is not None:
            check_job_transition(s.phase, target)
            s.phase = target
            s.reason = command.value if command is not JobCommand.DELETE else "Deleted"
            s.message = f"{verb} by {by}"
            now = utcnow()
            if target == JobPhase.RUNNING:
                s.completion_time = None
                kept: dict[str, TaskPhase] = {
                    a: p for a, p in s.task_status.items() if p == TaskPhase.SUCCEEDED
                }
                s.task_messages = {a: m for a, m in s.task_messages.items() if a in kept}
                s.task_status = kept
                s.start_time = s.start_time or now
            else:
                s.completion_time = now
                s.start_time = s.start_time or now
        return True

    def audit(before: Job, after: Job) -> AuditEntry:
        return AuditEntry(
            actor=f"peer/{trigger}" if trigger != me else "user",
            action=command.value.lower(),
            target_kind="Job",
            target_name=name,
            details={
                "from": before.status.phase.value,
                "to": after.status.phase.value,
                "trigger": trigger,
                "stage_version": after.status.stage.version,
                **({"reason": reason} if reason else {}),
            },
        )

    updated = await update_object(store, job, mutate, audit=audit)
    log.info("job %s: %s by %s -> %s", name, command.value, trigger, updated.status.phase.value)
    return updated


async def record_approval(store: Store, me: str, name: str, accept: bool, reason: str, actor: str) -> Job:
    """This participant's decision on a job awaiting its approval (`accord job approve|reject`)."""
    job = cast(Job, await store.get("Job", name))
    if not is_mirror(job, me):
        raise InvalidArgument(
            f"job {name!r} was submitted here ({me} is its initiator): only participants approve a job",
            code=ErrorCode.JOB_STAGE_INVALID,
        )
    current = job.status.approve_status.get(me, ApprovalState.PENDING)
    decision = ApprovalState.ACCEPTED if accept else ApprovalState.REJECTED
    if current == ApprovalState.PENDING and job.status.phase in JOB_TERMINAL:
        raise Conflict(
            f"job {name!r} already ended ({job.status.phase.value}); there is nothing left to decide",
            code=ErrorCode.JOB_STAGE_INVALID,
        )
    if current == decision:
        return job
    if current != ApprovalState.PENDING:
        raise Conflict(
            f"job {name!r} was already decided here ({current.value}); a decision cannot be changed",
            code=ErrorCode.JOB_STAGE_INVALID,
        )
    note = reason or ("approved" if accept else "rejected")

    def mutate(draft: Job) -> bool:
        if draft.status.approve_status.get(me, ApprovalState.PENDING) != ApprovalState.PENDING:
            return False
        draft.status.approve_status[me] = decision
        draft.status.approve_messages[me] = f"{'approved' if accept else 'rejected'} by {me}: {note}"
        return True

    def audit(before: Job, after: Job) -> AuditEntry:
        return AuditEntry(
            actor=actor,
            action="approve" if accept else "reject",
            target_kind="Job",
            target_name=name,
            details={"initiator": job.spec.initiator, "reason": note},
        )

    return await update_object(store, job, mutate, audit=audit)


def deleting_since(job: Job) -> datetime | None:
    raw = job.meta.annotations.get(DELETING_ANNOTATION)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return utcnow()
