"""Status writes with compare-and-swap, retried on conflict, audited when the phase changes.

Why a helper: every controller writes status the same way and the details are easy to get wrong.  The
caller passes a *mutation* (a function that edits a draft copy and says whether it changed anything)
rather than a finished object, because on a `Conflict` the mutation is re-applied to the freshly read
object: another writer (the other controller, the API recording progress) may have changed fields the
caller never looked at, and those must survive.  A mutation therefore checks its own preconditions on
the draft ("only if still Running") and returns False when there is nothing to do, which also keeps an
unchanged status from being written (a write is a watch event, which is a reconcile: writing nothing
new would loop forever).

Phase changes are checked against the transition table (`scheduling/transitions.py`) and recorded with
an `AuditEntry(action="phase", details={"from", "to"})` in the same store transaction as the write.
Mirrors of a peer's object (a participant's copy of a job or task, which follows the initiator's phases
and may skip the steps it did not see) are written with `check=False`: the initiator checked them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

from accord.controllers.queue import TemporaryError
from accord.errors import Conflict, ErrorCode, NotFound
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, Task
from accord.resources.meta import AnyResource
from accord.resources.phases import JobPhase, TaskPhase
from accord.scheduling.transitions import check_job_transition, check_task_transition
from accord.store.base import Store

R = TypeVar("R", bound=AnyResource)

Mutation = Callable[[R], bool]


def _phase(obj: AnyResource) -> Any:
    return getattr(obj.status, "phase", None)


def check_transition(before: AnyResource, after: AnyResource) -> None:
    old, new = _phase(before), _phase(after)
    if old is None or new is None or old == new:
        return
    if isinstance(old, JobPhase) and isinstance(new, JobPhase):
        check_job_transition(old, new)
    elif isinstance(old, TaskPhase) and isinstance(new, TaskPhase):
        check_task_transition(old, new)


def phase_audit(actor: str, before: AnyResource, after: AnyResource) -> AuditEntry | None:
    """An audit entry if the phase changed between `before` and `after`, else None."""
    old, new = _phase(before), _phase(after)
    if old == new:
        return None
    details: dict[str, Any] = {"from": str(old), "to": str(new)}
    message = getattr(after.status, "message", "")
    if message:
        details["message"] = message
    return AuditEntry(
        actor=actor,
        action="phase",
        target_kind=after.kind,
        target_name=after.meta.name,
        details=details,
    )


async def update_status(
    store: Store,
    current: R,
    mutate: Mutation[R],
    *,
    actor: str,
    attempts: int = 8,
    check: bool = True,
) -> R:
    """Apply `mutate` to a copy of `current` and store it (CAS); on Conflict re-read and re-apply.

    Returns the stored object, or the latest read one when the mutation found nothing to change.
    Raises `TemporaryError` if the object kept changing under us for `attempts` tries, `NotFound` if it
    was deleted, and `Conflict` (from the transition table) if the mutation asks for a forbidden phase.
    """
    obj = current
    for _ in range(attempts):
        draft = obj.model_copy(deep=True)
        if not mutate(draft):
            return obj
        if check:
            check_transition(obj, draft)
        try:
            return await store.update(draft, audit=phase_audit(actor, obj, draft))
        except Conflict as exc:
            if exc.code != ErrorCode.CONFLICT:
                raise
            obj = cast(R, await store.get(obj.kind, obj.meta.name))
    raise TemporaryError(
        f"{current.kind} {current.meta.name!r} kept changing during {attempts} status writes", delay=0.1
    )


Synced = TypeVar("Synced", Job, Task)


async def record_ack(store: Store, obj: Synced, peer: str, wanted: str, *, actor: str) -> None:
    """Remember that `peer` acknowledged the message whose digest is `wanted` (`status.sync[peer]`),
    so it is not sent again; an object deleted meanwhile needs nothing remembered."""

    def acked(draft: Synced) -> bool:
        if draft.status.sync.get(peer) == wanted:
            return False
        draft.status.sync[peer] = wanted
        return True

    with contextlib.suppress(NotFound):
        await update_status(store, obj, acked, actor=actor, check=False)
