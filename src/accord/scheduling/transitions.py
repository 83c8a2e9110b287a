"""Which phase changes are allowed, as data, checked in one place.

Why a table and not `if` chains spread over controllers: the lifecycle is part of the contract with
users and peers (DESIGN.md section 2), so it must be readable in one screen and testable exhaustively.
Flower keeps `VALID_RUN_STATUS_TRANSITIONS` the same way; Kuscia spreads it over per-phase handlers,
which makes "can a Suspended job become Cancelled?" a code-reading exercise.

Rules encoded below (Kuscia's, kuscia.md section 3):

- Job: `Initialized -> [AwaitingApproval] -> Pending -> Running -> Succeeded | Failed`.  Validation or a
  stop command may fail a job from any non-terminal phase; approval is refused only while awaiting it;
  only a Running job can be suspended; Failed and Suspended jobs can be restarted (back to Running);
  Cancel ends every phase except the final ones.  Succeeded, ApprovalReject and Cancelled are final.
- Task: `Pending -> Preparing -> Running -> Succeeded | Failed`; any non-final phase may fail (a refused
  reservation, an engine that cannot start, a stop); Succeeded and Failed are final.

Writing the same phase again is not a transition and is always allowed (reconcilers are idempotent and
may re-apply a status).
"""

from __future__ import annotations

from accord.errors import Conflict, ErrorCode
from accord.resources.phases import JobPhase, TaskPhase

_J = JobPhase
_T = TaskPhase

JOB_TRANSITIONS: frozenset[tuple[JobPhase, JobPhase]] = frozenset(
    {
        (_J.INITIALIZED, _J.AWAITING_APPROVAL),
        (_J.INITIALIZED, _J.PENDING),
        (_J.INITIALIZED, _J.FAILED),
        (_J.INITIALIZED, _J.CANCELLED),
        (_J.AWAITING_APPROVAL, _J.PENDING),
        (_J.AWAITING_APPROVAL, _J.APPROVAL_REJECT),
        (_J.AWAITING_APPROVAL, _J.FAILED),
        (_J.AWAITING_APPROVAL, _J.CANCELLED),
        (_J.PENDING, _J.RUNNING),
        (_J.PENDING, _J.FAILED),
        (_J.PENDING, _J.CANCELLED),
        (_J.RUNNING, _J.SUCCEEDED),
        (_J.RUNNING, _J.FAILED),
        (_J.RUNNING, _J.SUSPENDED),
        (_J.RUNNING, _J.CANCELLED),
        (_J.SUSPENDED, _J.RUNNING),
        (_J.SUSPENDED, _J.FAILED),
        (_J.SUSPENDED, _J.CANCELLED),
        (_J.FAILED, _J.RUNNING),
        (_J.FAILED, _J.CANCELLED),
    }
)

TASK_TRANSITIONS: frozenset[tuple[TaskPhase, TaskPhase]] = frozenset(
    {
        (_T.PENDING, _T.PREPARING),
        (_T.PENDING, _T.FAILED),
        (_T.PREPARING, _T.RUNNING),
        (_T.PREPARING, _T.FAILED),
        (_T.RUNNING, _T.SUCCEEDED),
        (_T.RUNNING, _T.FAILED),
    }
)


def _allowed_from(table: frozenset[tuple[str, str]], phase: str) -> list[str]:
    return sorted(b for a, b in table if a == phase)


def is_job_transition_allowed(current: JobPhase, target: JobPhase) -> bool:
    return current == target or (current, target) in JOB_TRANSITIONS


def is_task_transition_allowed(current: TaskPhase, target: TaskPhase) -> bool:
    return current == target or (current, target) in TASK_TRANSITIONS


def check_job_transition(current: JobPhase, target: JobPhase) -> None:
    """Raise Conflict (code 11207) if a job may not go from `current` to `target`."""
    if is_job_transition_allowed(current, target):
        return
    allowed = _allowed_from(JOB_TRANSITIONS, current)
    raise Conflict(
        f"a job cannot go from {current.value} to {target.value}; from {current.value} it may go to "
        f"{', '.join(allowed) if allowed else 'nothing (the phase is final)'}",
        code=ErrorCode.JOB_STAGE_INVALID,
    )


def check_task_transition(current: TaskPhase, target: TaskPhase) -> None:
    """Raise Conflict (code 11222) if a task may not go from `current` to `target`."""
    if is_task_transition_allowed(current, target):
        return
    allowed = _allowed_from(TASK_TRANSITIONS, current)
    raise Conflict(
        f"a task cannot go from {current.value} to {target.value}; from {current.value} it may go to "
        f"{', '.join(allowed) if allowed else 'nothing (the phase is final)'}",
        code=ErrorCode.TASK_INVALID,
    )
