"""Job-level protocol on the receiving side, and the rules every party applies the same way.

**Participant receives a proposal** (`JobInbox.propose`).  It checks the job on its own terms, not the
initiator's: the sender is the job's initiator; this domain is one of the parties; this node has a route
to the initiator (it must report back); the DAG is valid; every AppImage of the tasks it takes part in
is known here; and for tasks whose engines expose ports to peers, it has a route to each co-party.  A
refusal is recorded in the audit log and answered with the reasons; nothing else is stored.  An
accepted proposal becomes a *mirror* Job: same name and spec, label `accord/initiator`, annotation
`accord/origin-uid` (the incarnation it mirrors).  Its approval is `JobAccepted` at once unless the node
has `enable_approval`; then an approval policy may still accept it (below), else it waits for
`accord job approve|reject NAME` here.  A second proposal of the same incarnation gets the same answer
(idempotent); a proposal under the name of a finished mirror of the same initiator replaces it.

**Approval policies** (resource-based, so they are audited and shown by `accord get`): an annotation
`accord/auto-approve-apps: "app1,app2"` (or `"*"`) on a partner *Domain* approves that domain's jobs
that use only those apps; an annotation `accord/auto-approve-initiators: "alice,bob"` (or `"*"`) on an
*AppImage* approves jobs of those initiators for that app.  A job is auto-approved when every task this
node takes part in is covered by one of the two rules.

**Participant receives a JobSync**: the initiator's phase, stage, approvals and task phases are copied
into the mirror unless the sync is older than the last one applied (`revision`, kept in annotation
`accord/origin-revision`); this node's own approval is never overwritten by the initiator's view of it.

**Initiator receives a report or a command** from a party: approvals leave Pending only once; commands
go through `apply_command`, the single place where Kuscia's guards live (suspend only a Running job:
11210; restart only a Failed or Suspended one: 11211; nothing changes a Succeeded, Cancelled or rejected
job: 11207) and where the stage version is incremented.  Services call the same function for commands
issued at the initiator itself, so a command behaves the same wherever it is issued.

Every write here is a compare-and-swap retried on conflict, with an audit record in the same
transaction naming the peer (`actor="peer/<domain>"`).
"""

from __future__ import annotations

import logging
from typing import cast

from accord.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PermissionDenied
from accord.interop.commands import apply_command
from accord.interop.common import (
    delete_tasks_of,
    find,
    is_mirror,
    phase_entry,
    routes_from,
    update_object,
)
from accord.interop.messages import (
    INITIATOR_LABEL,
    ORIGIN_REVISION,
    ORIGIN_UID,
    Ack,
    JobCommandReply,
    JobCommandRequest,
    JobDelete,
    JobProposal,
    JobSync,
    JobSyncReply,
    PartyJobReport,
    ProposalReply,
)
from accord.resources.audit import AuditEntry
from accord.resources.job import Job, JobSpec, JobStatus
from accord.resources.meta import ObjectMeta
from accord.resources.phases import JOB_TERMINAL, ApprovalState, JobPhase
from accord.scheduling.dag import validate_job
from accord.store.base import Store

log = logging.getLogger(__name__)

APPROVE_APPS_ANNOTATION = "accord/auto-approve-apps"
APPROVE_INITIATORS_ANNOTATION = "accord/auto-approve-initiators"


def _names(value: str) -> set[str]:
    return {part.strip() for part in value.split(",") if part.strip()}


async def auto_approval(store: Store, initiator: str, apps: set[str]) -> str:
    """The policy that approves `initiator`'s job using `apps` here, or '' if none does."""
    domain = await find(store, "Domain", initiator)
    by_domain = _names(domain.meta.annotations.get(APPROVE_APPS_ANNOTATION, "")) if domain else set()
    covered: list[str] = []
    for app in sorted(apps):
        if "*" in by_domain or app in by_domain:
            covered.append(f"Domain {initiator} {APPROVE_APPS_ANNOTATION} covers {app}")
            continue
        image = await find(store, "AppImage", app)
        allowed = _names(image.meta.annotations.get(APPROVE_INITIATORS_ANNOTATION, "")) if image else set()
        if "*" in allowed or initiator in allowed:
            covered.append(f"AppImage {app} {APPROVE_INITIATORS_ANNOTATION} covers {initiator}")
            continue
        return ""
    return "auto-approved by policy: " + "; ".join(covered)


async def check_proposal(store: Store, me: str, spec: JobSpec) -> list[str]:
    """Why this node cannot take part in the job (empty if it can)."""
    problems: list[str] = []
    try:
        validate_job(spec)
    except InvalidArgument as exc:
        problems.append(exc.message)
    if me not in spec.parties():
        return [*problems, f"{me} is not a party of the job"]
    routes = await routes_from(store, me)
    if spec.initiator not in routes:
        problems.append(
            f"{me} has no route to the initiator {spec.initiator} (add one: accord route add --to "
            f"{spec.initiator} --endpoint https://HOST:PORT)"
        )
    for task in spec.tasks:
        mine = [p for p in task.parties if p.domain == me]
        if not mine:
            continue
        if len(mine) > 1:
            problems.append(f"task {task.alias!r}: {me} takes part more than once, which is not supported")
        image = await find(store, "AppImage", task.app_image)
        if image is None:
            problems.append(f"task {task.alias!r}: AppImage {task.app_image!r} is not known at {me}")
            continue
        exposes = any(p.scope == "Cluster" for p in getattr(image.spec, "ports", []))
        if exposes:
            for other in sorted({p.domain for p in task.parties} - {me}):
                if other not in routes:
                    problems.append(f"task {task.alias!r}: {me} has no route to its co-party {other}")
    return problems


# -- the receiving side ---------------------------------------------------------------------------------


class JobInbox:
    """Job-level messages from peers; see the module docstring for the rules."""

    def __init__(self, store: Store, domain: str, *, enable_approval: bool) -> None:
        self.store = store
        self.me = domain
        self.enable_approval = enable_approval

    async def propose(self, sender: str, msg: JobProposal) -> ProposalReply:
        spec = msg.spec
        if sender != spec.initiator:
            raise PermissionDenied(
                f"{sender} proposed job {msg.job!r} whose initiator is {spec.initiator}: "
                "only the initiator may propose a job"
            )
        existing = cast(Job | None, await find(self.store, "Job", msg.job))
        if existing is not None:
            if existing.meta.annotations.get(ORIGIN_UID) == msg.job_uid and existing.spec.initiator == sender:
                return self._proposal_reply(existing)
            if existing.spec.initiator == sender and existing.status.phase in JOB_TERMINAL:
                await self._delete(existing, f"peer/{sender}", "replaced by a new job of the same name")
            else:
                return await self._refuse(
                    sender, msg.job, [f"a job named {msg.job!r} already exists at {self.me}"]
                )
        problems = await check_proposal(self.store, self.me, spec)
        if problems:
            return await self._refuse(sender, msg.job, problems)
        apps = {t.app_image for t in spec.tasks if any(p.domain == self.me for p in t.parties)}
        approval, why = ApprovalState.ACCEPTED, "approval is not required at " + self.me
        if self.enable_approval:
            rule = await auto_approval(self.store, sender, apps)
            if rule:
                why = rule
            else:
                approval, why = ApprovalState.PENDING, f"awaiting approval at {self.me}"
        mirror = Job(
            meta=ObjectMeta(
                name=msg.job,
                domain=sender,
                labels={INITIATOR_LABEL: sender},
                annotations={ORIGIN_UID: msg.job_uid},
            ),
            spec=spec,
            status=JobStatus(
                phase=JobPhase.AWAITING_APPROVAL
                if approval == ApprovalState.PENDING
                else JobPhase.INITIALIZED,
                approve_status={self.me: approval},
                approve_messages={self.me: why},
            ),
        )
        entry = AuditEntry(
            actor=f"peer/{sender}",
            action="create",
            target_kind="Job",
            target_name=msg.job,
            details={"initiator": sender, "origin_uid": msg.job_uid, "approval": approval.value, "why": why},
        )
        try:
            created = await self.store.create(mirror, audit=entry)
        except AlreadyExists:
            created = cast(Job, await self.store.get("Job", msg.job))
            if created.meta.annotations.get(ORIGIN_UID) != msg.job_uid:
                return await self._refuse(sender, msg.job, [f"a job named {msg.job!r} already exists"])
        log.info("job %s proposed by %s: accepted (%s)", msg.job, sender, why)
        return self._proposal_reply(created)

    def _proposal_reply(self, job: Job) -> ProposalReply:
        return ProposalReply(
            accepted=True,
            approval=job.status.approve_status.get(self.me, ApprovalState.PENDING),
            reason=job.status.approve_messages.get(self.me, ""),
        )

    async def _refuse(self, sender: str, job: str, problems: list[str]) -> ProposalReply:
        reason = "; ".join(problems)
        log.info("job %s proposed by %s: refused (%s)", job, sender, reason)
        await self.store.append_audit(
            AuditEntry(
                actor=f"peer/{sender}",
                action="refuse",
                target_kind="Job",
                target_name=job,
                details={"initiator": sender, "reason": reason},
            )
        )
        return ProposalReply(accepted=False, approval=ApprovalState.REJECTED, reason=reason)

    async def _mirror(self, sender: str, name: str, uid: str) -> Job:
        job = cast(Job, await self.store.get("Job", name))
        if job.spec.initiator != sender:
            raise PermissionDenied(f"job {name!r} here is not initiated by {sender}")
        if job.meta.annotations.get(ORIGIN_UID) != uid:
            raise Conflict(f"job {name!r} here mirrors another incarnation of that job (uid differs)")
        return job

    async def sync_job(self, sender: str, msg: JobSync) -> JobSyncReply:
        job = await self._mirror(sender, msg.job, msg.job_uid)
        state = msg.state

        def mutate(draft: Job) -> bool:
            applied = int(draft.meta.annotations.get(ORIGIN_REVISION, "-1") or -1)
            if msg.revision <= applied:
                return False
            s = draft.status
            own = s.approve_status.get(self.me)
            own_message = s.approve_messages.get(self.me)
            s.phase, s.reason, s.message = state.phase, state.reason, state.message
            s.approve_status = dict(state.approve_status)
            s.approve_messages = dict(state.approve_messages)
            if own is not None:
                s.approve_status[self.me] = own
                s.approve_messages[self.me] = own_message or ""
            if state.stage.version >= s.stage.version:
                s.stage = state.stage
            s.task_status = dict(state.task_status)
            s.task_messages = dict(state.task_messages)
            s.start_time, s.completion_time = state.start_time, state.completion_time
            draft.meta.annotations[ORIGIN_REVISION] = str(msg.revision)
            return True

        updated = await update_object(
            self.store, job, mutate, audit=lambda a, b: phase_entry(f"peer/{sender}", a, b)
        )
        return JobSyncReply(
            approval=updated.status.approve_status.get(self.me, ApprovalState.PENDING),
            reason=updated.status.approve_messages.get(self.me, ""),
        )

    async def _own_job(self, sender: str, name: str, uid: str | None = None) -> Job:
        job = cast(Job, await self.store.get("Job", name))
        if is_mirror(job, self.me):
            raise PermissionDenied(f"job {name!r} is initiated by {job.spec.initiator}, not by {self.me}")
        if sender not in job.spec.parties():
            raise PermissionDenied(f"{sender} is not a party of job {name!r}")
        if uid is not None and uid != job.meta.uid:
            raise Conflict(f"job {name!r} here is another incarnation of that job (uid differs)")
        return job

    async def report_job(self, sender: str, msg: PartyJobReport) -> Ack:
        job = await self._own_job(sender, msg.job, msg.job_uid)
        if msg.approval == ApprovalState.PENDING:
            return Ack()

        def mutate(draft: Job) -> bool:
            if draft.status.approve_status.get(sender, ApprovalState.PENDING) != ApprovalState.PENDING:
                return False
            draft.status.approve_status[sender] = msg.approval
            draft.status.approve_messages[sender] = msg.reason
            return True

        def audit(before: Job, after: Job) -> AuditEntry:
            return AuditEntry(
                actor=f"peer/{sender}",
                action="approve" if msg.approval == ApprovalState.ACCEPTED else "reject",
                target_kind="Job",
                target_name=msg.job,
                details={"party": sender, "reason": msg.reason},
            )

        await update_object(self.store, job, mutate, audit=audit)
        return Ack()

    async def command(self, sender: str, msg: JobCommandRequest) -> JobCommandReply:
        await self._own_job(sender, msg.job)
        job = await apply_command(
            self.store, self.me, msg.job, msg.command, trigger=sender, reason=msg.reason
        )
        return JobCommandReply(phase=job.status.phase, stage=job.status.stage, message=job.status.message)

    async def delete_job(self, sender: str, msg: JobDelete) -> Ack:
        job = cast(Job | None, await find(self.store, "Job", msg.job))
        if job is None:
            return Ack()
        if job.spec.initiator != sender:
            raise PermissionDenied(f"job {msg.job!r} here is not initiated by {sender}")
        if job.meta.annotations.get(ORIGIN_UID) == msg.job_uid:
            await self._delete(job, f"peer/{sender}", f"deleted by its initiator {sender}")
        return Ack()

    async def _delete(self, job: Job, actor: str, why: str) -> None:
        try:
            await self.store.delete(
                "Job",
                job.meta.name,
                audit=AuditEntry(
                    actor=actor,
                    action="delete",
                    target_kind="Job",
                    target_name=job.meta.name,
                    details={"why": why},
                ),
            )
        except NotFound:
            return
        await delete_tasks_of(self.store, job.meta.name, actor)
