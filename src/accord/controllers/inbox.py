"""Inbox: what this node does with each interop message (the `InteropHandler` of `interop/server.py`).

Job-level messages are handled by `interop.jobs.JobInbox` (store-only rules); this module adds the
task-level ones, which act on this node's own party through `LocalParty` (runtime + gateway registry):

- **TaskPrepare** (from the job's initiator): the job must be mirrored here (same incarnation) and
  approved by this node, and this domain must be a party of the task.  The task is created as a mirror
  (label `accord/job`, `accord/task-alias`, `accord/stage-version`; annotation `accord/origin-uid`;
  phase Preparing), then prepared; the answer is this party's status: Preparing with its endpoints, or
  Failed with the reason ("refused to prepare: ...").  A repeated prepare of the same incarnation
  answers the stored status again; a prepare of a *new* incarnation under the same name (the job was
  restarted) first stops and removes the old one.
- **TaskStart**: the engine is launched (`LocalParty.start`, idempotent; an engine already running is
  adopted) and the mirror's phase becomes Running.
- **TaskRelease**: the initiator's final phase and message are written into the mirror; the task
  controller then stops the engine if it still runs, unregisters the services and frees the ports.
- **PartyTaskReport** (at the initiator, from a party): the sender's own PartyStatus is merged into the
  task (a party only moves forward), which wakes the coordinator.

Each answer also records, in `status.sync[initiator]`, the digest of the party status it carried, so the
participant's task controller does not report the same state again.  The sender is always the
gateway-authenticated domain; a message about a task from a domain that is not its initiator (or, for
reports, not one of its parties) is refused with PermissionDenied.
"""

from __future__ import annotations

import logging
from typing import cast

from accord.controllers.party import ACTOR, LocalParty, ensure_parties, merge_party, party_of
from accord.controllers.status import update_status
from accord.errors import AlreadyExists, Conflict, NotFound, PermissionDenied
from accord.interop.common import JOB_LABEL
from accord.interop.jobs import JobInbox
from accord.interop.messages import (
    INITIATOR_LABEL,
    ORIGIN_UID,
    STAGE_VERSION_LABEL,
    Ack,
    PartyReply,
    PartyTaskReport,
    TaskPrepare,
    TaskRelease,
    TaskStart,
    digest,
)
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, PartyStatus, Task, TaskStatus
from accord.resources.meta import ObjectMeta, utcnow
from accord.resources.phases import TASK_TERMINAL, ApprovalState, TaskPhase
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

ALIAS_LABEL = "accord/task-alias"


class Inbox(JobInbox):
    """Every interop message this node accepts; see the module docstring."""

    def __init__(self, store: Store, settings: NodeSettings, party: LocalParty) -> None:
        super().__init__(store, settings.domain, enable_approval=settings.enable_approval)
        self.party = party

    # -- helpers --------------------------------------------------------------------------------------

    def _reply(self, task: Task) -> PartyReply:
        own = party_of(task, self.me)
        return PartyReply(party=own or PartyStatus(domain=self.me, phase=TaskPhase.PENDING))

    async def _mirror_task(self, sender: str, name: str, uid: str) -> Task:
        task = cast(Task, await self.store.get("Task", name))
        if task.spec.initiator != sender:
            raise PermissionDenied(f"task {name!r} here is not coordinated by {sender}")
        if task.meta.annotations.get(ORIGIN_UID) != uid:
            raise NotFound(f"task {name!r} here belongs to another incarnation of that task")
        return task

    async def _acked(self, task: Task, sender: str, *, phase: TaskPhase | None = None) -> Task:
        """Record the digest of the party status being answered (and the mirror phase, if given)."""
        own = party_of(task, self.me)
        wanted = digest(own.model_copy()) if own is not None else ""

        def apply(draft: Task) -> bool:
            changed = False
            if wanted and draft.status.sync.get(sender) != wanted:
                draft.status.sync[sender] = wanted
                changed = True
            if phase is not None and draft.status.phase not in TASK_TERMINAL and draft.status.phase != phase:
                draft.status.phase = phase
                changed = True
            return changed

        return await update_status(self.store, task, apply, actor=ACTOR, check=False)

    # -- prepare / start / release -------------------------------------------------------------------

    async def prepare(self, sender: str, msg: TaskPrepare) -> PartyReply:
        spec = msg.spec
        if spec.initiator != sender:
            raise PermissionDenied(
                f"{sender} cannot prepare task {msg.task!r}: its initiator is {spec.initiator}"
            )
        if self.me not in {p.domain for p in spec.parties}:
            raise PermissionDenied(f"{self.me} is not a party of task {msg.task!r}")
        refusal = await self._check_job(sender, msg)
        if refusal:
            log.info("task %s: refusing to prepare for %s: %s", msg.task, sender, refusal)
            return PartyReply(
                party=PartyStatus(
                    domain=self.me, phase=TaskPhase.FAILED, message=f"refused to prepare: {refusal}"
                )
            )
        task = await self._create_or_reuse(sender, msg)
        task = await self.party.prepare(task)
        task = await self._acked(task, sender)
        return self._reply(task)

    async def _check_job(self, sender: str, msg: TaskPrepare) -> str:
        try:
            job = cast(Job, await self.store.get("Job", msg.job))
        except NotFound:
            return f"job {msg.job!r} is not known at {self.me}"
        if job.spec.initiator != sender or job.meta.annotations.get(ORIGIN_UID) != msg.job_uid:
            return f"job {msg.job!r} at {self.me} is not the one {sender} coordinates"
        approval = job.status.approve_status.get(self.me, ApprovalState.PENDING)
        if approval != ApprovalState.ACCEPTED:
            return f"job {msg.job!r} is not approved at {self.me} ({approval.value})"
        if not any(t.alias == msg.spec.alias for t in job.spec.tasks):
            return f"job {msg.job!r} has no task {msg.spec.alias!r}"
        return ""

    async def _create_or_reuse(self, sender: str, msg: TaskPrepare) -> Task:
        try:
            existing = cast(Task, await self.store.get("Task", msg.task))
        except NotFound:
            existing = None
        if existing is not None:
            if (
                existing.spec.initiator == sender
                and existing.meta.annotations.get(ORIGIN_UID) == msg.task_uid
            ):
                return existing
            if existing.spec.initiator != sender:
                raise Conflict(f"a task named {msg.task!r} already exists at {self.me} for another initiator")
            # A new incarnation (the job was restarted): the old one goes first, engine and all.
            await self.party.stop(existing, f"stopped: replaced by a new run of task {msg.task!r}")
            try:
                await self.store.delete(
                    "Task",
                    msg.task,
                    resource_version=None,
                    audit=AuditEntry(
                        actor=f"peer/{sender}",
                        action="delete",
                        target_kind="Task",
                        target_name=msg.task,
                        details={"why": "replaced by a new incarnation"},
                    ),
                )
            except NotFound:
                pass
        mirror = Task(
            meta=ObjectMeta(
                name=msg.task,
                domain=sender,
                labels={
                    JOB_LABEL: msg.job,
                    ALIAS_LABEL: msg.spec.alias,
                    STAGE_VERSION_LABEL: str(msg.stage_version),
                    INITIATOR_LABEL: sender,
                },
                annotations={ORIGIN_UID: msg.task_uid},
            ),
            spec=msg.spec,
            status=TaskStatus(
                phase=TaskPhase.PREPARING,
                parties=[PartyStatus(domain=p.domain, role=p.role) for p in msg.spec.parties],
            ),
        )
        entry = AuditEntry(
            actor=f"peer/{sender}",
            action="create",
            target_kind="Task",
            target_name=msg.task,
            details={"job": msg.job, "alias": msg.spec.alias, "origin_uid": msg.task_uid},
        )
        try:
            return await self.store.create(mirror, audit=entry)
        except AlreadyExists:
            found = cast(Task, await self.store.get("Task", msg.task))
            if found.meta.annotations.get(ORIGIN_UID) != msg.task_uid:
                raise
            return found

    async def start(self, sender: str, msg: TaskStart) -> PartyReply:
        task = await self._mirror_task(sender, msg.task, msg.task_uid)
        if task.status.phase in TASK_TERMINAL:
            return self._reply(task)
        task = await self.party.start(task)
        task = await self._acked(task, sender, phase=TaskPhase.RUNNING)
        return self._reply(task)

    async def release(self, sender: str, msg: TaskRelease) -> PartyReply:
        task = await self._mirror_task(sender, msg.task, msg.task_uid)

        def apply(draft: Task) -> bool:
            if draft.status.phase == msg.phase and draft.status.message == msg.message:
                return False
            ensure_parties(draft)
            draft.status.phase = msg.phase
            draft.status.message = msg.message
            if msg.phase in TASK_TERMINAL:
                draft.status.completion_time = draft.status.completion_time or utcnow()
            for party in msg.parties:
                current = party_of(draft, party.domain)
                if current is not None and party.domain != self.me:
                    merge_party(current, party)
            return True

        task = await update_status(self.store, task, apply, actor=f"peer/{sender}", check=False)
        return self._reply(task)

    # -- at the initiator -------------------------------------------------------------------------------

    async def report_task(self, sender: str, msg: PartyTaskReport) -> Ack:
        task = cast(Task, await self.store.get("Task", msg.task))
        if task.spec.initiator != self.me:
            raise PermissionDenied(
                f"task {msg.task!r} is coordinated by {task.spec.initiator}, not {self.me}"
            )
        if sender not in {p.domain for p in task.spec.parties} or msg.party.domain != sender:
            raise PermissionDenied(f"{sender} is not a party of task {msg.task!r} (or reports for another)")
        if msg.task_uid != task.meta.uid:
            raise Conflict(f"task {msg.task!r} here is another incarnation of that task")

        def apply(draft: Task) -> bool:
            ensure_parties(draft)
            current = party_of(draft, sender)
            return current is not None and merge_party(current, msg.party)

        await update_status(self.store, task, apply, actor=f"peer/{sender}")
        return Ack()
