"""Helpers every part of the job protocol shares: who is who in a job, the mirrored state, CAS writes.

`update_object` is the interop layer's compare-and-swap write (re-read and re-apply the mutation on a stale
version), with the audit record computed from the before/after pair so it lands in the same transaction;
the controllers use their own `update_status`, which adds the transition table check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from accord.errors import Conflict, ErrorCode, NotFound, Unavailable
from accord.interop.messages import JobState
from accord.resources.audit import AuditEntry
from accord.resources.domain import DomainRoute
from accord.resources.job import Job, JobSpec
from accord.resources.meta import AnyResource
from accord.store.base import Store

JOB_LABEL = "accord/job"

R = TypeVar("R", bound=AnyResource)


def is_mirror(job: Job, me: str) -> bool:
    """A participant's copy of a job initiated elsewhere."""
    return job.spec.initiator != me


def participants(spec: JobSpec, me: str) -> list[str]:
    """Every party of the job except `me`, in the spec's stable order."""
    return [d for d in spec.parties() if d != me]


def job_state_of(job: Job) -> JobState:
    s = job.status
    return JobState(
        phase=s.phase,
        reason=s.reason,
        message=s.message,
        approve_status=dict(s.approve_status),
        approve_messages=dict(s.approve_messages),
        stage=s.stage,
        task_status=dict(s.task_status),
        task_messages=dict(s.task_messages),
        start_time=s.start_time,
        completion_time=s.completion_time,
    )


def phase_entry(actor: str, before: AnyResource, after: AnyResource, **extra: object) -> AuditEntry | None:
    old = getattr(before.status, "phase", None)
    new = getattr(after.status, "phase", None)
    if old == new and not extra:
        return None
    details: dict[str, object] = {"from": str(old), "to": str(new), **extra}
    message = getattr(after.status, "message", "")
    if message:
        details["message"] = message
    return AuditEntry(
        actor=actor, action="phase", target_kind=after.kind, target_name=after.meta.name, details=details
    )


async def update_object(
    store: Store,
    obj: R,
    mutate: Callable[[R], bool],
    *,
    audit: Callable[[R, R], AuditEntry | None],
    attempts: int = 8,
) -> R:
    """Apply `mutate` to a copy and store it with CAS; on a stale version re-read and re-apply."""
    current = obj
    for _ in range(attempts):
        draft = current.model_copy(deep=True)
        if not mutate(draft):
            return current
        try:
            return await store.update(draft, audit=audit(current, draft))
        except Conflict as exc:
            if exc.code != ErrorCode.CONFLICT:
                raise
            current = cast(R, await store.get(obj.kind, obj.meta.name))
    raise Unavailable(f"{obj.kind} {obj.meta.name!r} kept changing during {attempts} writes; try again")


async def routes_from(store: Store, me: str) -> set[str]:
    """Destinations this node has a route to."""
    out: set[str] = set()
    for obj in await store.list("DomainRoute"):
        route = cast(DomainRoute, obj)
        if route.spec.source == me:
            out.add(route.spec.destination)
    return out


async def delete_tasks_of(store: Store, job: str, actor: str) -> None:
    """Delete the Tasks of Job `job` (label `accord/job`), each with its own audit record."""
    for task in await store.list("Task", selector={JOB_LABEL: job}):
        try:
            await store.delete(
                "Task",
                task.meta.name,
                audit=AuditEntry(
                    actor=actor,
                    action="delete",
                    target_kind="Task",
                    target_name=task.meta.name,
                    details={"cascade": f"Job/{job}"},
                ),
            )
        except NotFound:  # a controller removed it first; the outcome is the same
            continue


async def find(store: Store, kind: str, name: str) -> AnyResource | None:
    try:
        return await store.get(kind, name)
    except NotFound:
        return None
