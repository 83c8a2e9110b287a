"""JobMessenger: the job controller's messages to peers, each derived from the stored job and retried.

- `propose` (initiator -> every participant that has not answered): the spec and the job's uid; an
  answer is an acceptance (with the participant's approval state) or a refusal (with its reasons); an
  unreachable participant is retried with backoff (`SendBook`) and reported by the caller once its
  proposal deadline passes.
- `sync` (initiator -> every participant holding a mirror): the job's state (`JobState`) whenever its
  digest differs from the one the participant last acknowledged (`status.sync[peer]`).  The answer
  carries the participant's approval, which also recovers an approval report whose reply was lost.  A
  participant that refuses (it dropped its mirror, or holds another incarnation) is not asked again.
- `tell_deleted` (initiator -> participants): `JobDelete`; acknowledged deletions are marked
  `status.sync[peer] = "deleted"` so a restarted node does not ask again.
- `report_approval` (participant -> initiator): this node's approval decision, until acknowledged.

Every acknowledgement is recorded in one CAS write; nothing here is kept in memory but the retry pacing.
"""

from __future__ import annotations

import asyncio
import logging

from accord.controllers.status import record_ack, update_status
from accord.errors import AccordError, NotFound
from accord.interop.client import PeerClient, SendBook
from accord.interop.common import job_state_of, participants
from accord.interop.messages import ORIGIN_UID, JobDelete, JobProposal, JobSync, PartyJobReport, digest
from accord.resources.job import Job
from accord.resources.phases import ApprovalState
from accord.store.base import Store

log = logging.getLogger(__name__)

ACTOR = "controller/job"
DELETED_MARK = "deleted"

Answers = dict[str, tuple[ApprovalState, str]]


class JobMessenger:
    """See the module docstring."""

    def __init__(self, store: Store, domain: str, peers: PeerClient, book: SendBook) -> None:
        self._store = store
        self.me = domain
        self._peers = peers
        self.book = book

    def holders(self, job: Job) -> list[str]:
        """Participants that accepted the proposal (so hold a mirror), in the spec's order."""
        return [p for p in participants(job.spec, self.me) if p in job.status.approve_status]

    async def propose(self, job: Job, peers: list[str]) -> tuple[Answers, list[str]]:
        """Propose the job to `peers`; (accepted: peer -> (approval, reason), refusals)."""
        proposal = JobProposal(job=job.name, job_uid=job.meta.uid, spec=job.spec)
        results = await asyncio.gather(
            *(self._peers.propose(p, proposal) for p in peers), return_exceptions=True
        )
        accepted: Answers = {}
        refused: list[str] = []
        for peer, result in zip(peers, results, strict=True):
            key = (job.name, peer)
            if isinstance(result, AccordError) and result.retryable:
                delay = self.book.failed(key, result.message)
                log.info("job %s: proposal to %s failed (%s); retry in %.1f s", job.name, peer, result, delay)
            elif isinstance(result, AccordError):
                self.book.succeeded(key)
                refused.append(f"{peer} refused the job: {result.message}")
            elif isinstance(result, BaseException):
                self.book.failed(key, repr(result))
                log.warning("job %s: proposal to %s failed: %r", job.name, peer, result)
            else:
                self.book.succeeded(key)
                if result.accepted:
                    accepted[peer] = (result.approval, result.reason)
                else:
                    refused.append(f"{peer} refused the job: {result.reason}")
        return accepted, refused

    async def sync(self, job: Job) -> float | None:
        """Send the job's state to every participant that has a mirror and has not acknowledged it."""
        state = job_state_of(job)
        wanted = digest(state)
        todo = [p for p in self.holders(job) if job.status.sync.get(p) != wanted]
        due = [p for p in todo if self.book.due((job.name, p))]
        if due:
            msg = JobSync(job=job.name, job_uid=job.meta.uid, revision=job.meta.resource_version, state=state)
            results = await asyncio.gather(
                *(self._peers.sync_job(p, msg) for p in due), return_exceptions=True
            )
            acked: dict[str, tuple[ApprovalState, str]] = {}
            for peer, result in zip(due, results, strict=True):
                key = (job.name, peer)
                if isinstance(result, AccordError) and result.retryable:
                    self.book.failed(key, result.message)
                elif isinstance(result, AccordError):
                    # The participant dropped its mirror (or holds another incarnation): nothing to sync.
                    log.info("job %s: %s refused the sync: %s", job.name, peer, result.message)
                    self.book.succeeded(key)
                    acked[peer] = (ApprovalState.PENDING, "")
                elif isinstance(result, BaseException):
                    self.book.failed(key, repr(result))
                else:
                    self.book.succeeded(key)
                    acked[peer] = (result.approval, result.reason)
            if acked:
                await self.record_sync(job, wanted, acked)
        return self.book.wait([(job.name, p) for p in todo])

    async def record_sync(self, job: Job, wanted: str, acked: dict[str, tuple[ApprovalState, str]]) -> None:
        def record(draft: Job) -> bool:
            changed = False
            for peer, (approval, reason) in acked.items():
                if draft.status.sync.get(peer) != wanted:
                    draft.status.sync[peer] = wanted
                    changed = True
                current = draft.status.approve_status.get(peer, ApprovalState.PENDING)
                if current == ApprovalState.PENDING and approval != ApprovalState.PENDING:
                    draft.status.approve_status[peer] = approval
                    draft.status.approve_messages[peer] = reason
                    changed = True
            return changed

        try:
            await update_status(self._store, job, record, actor=ACTOR)
        except NotFound:
            return

    async def tell_deleted(self, job: Job) -> float | None:
        """Send `JobDelete` to every holder that has not acknowledged it; a delay while some have not."""
        todo = [p for p in self.holders(job) if job.status.sync.get(p) != DELETED_MARK]
        if not todo:
            return None
        due = [p for p in todo if self.book.due((job.name, p))]
        msg = JobDelete(job=job.name, job_uid=job.meta.uid)
        results = await asyncio.gather(*(self._peers.delete_job(p, msg) for p in due), return_exceptions=True)
        done = []
        for peer, result in zip(due, results, strict=True):
            if isinstance(result, BaseException) and (
                not isinstance(result, AccordError) or result.retryable
            ):
                self.book.failed((job.name, peer), str(result))
            else:
                done.append(peer)  # deleted there, or it never had the job / refuses: nothing to do
        if done:
            await self.record_sync(job, DELETED_MARK, {p: (ApprovalState.PENDING, "") for p in done})
        if len(done) == len(todo):
            return None
        return self.book.wait([(job.name, p) for p in todo if p not in done]) or 0.5

    async def report_approval(self, job: Job) -> float | None:
        """At a participant: tell the initiator this node's approval decision until it acknowledged."""
        approval = job.status.approve_status.get(self.me, ApprovalState.PENDING)
        if approval == ApprovalState.PENDING:
            return None
        initiator = job.spec.initiator
        report = PartyJobReport(
            job=job.name,
            job_uid=job.meta.annotations.get(ORIGIN_UID, ""),
            approval=approval,
            reason=job.status.approve_messages.get(self.me, ""),
        )
        wanted = digest(report)
        if job.status.sync.get(initiator) == wanted:
            return None
        key = (job.name, initiator)
        if not self.book.due(key):
            return self.book.wait([key])
        try:
            await self._peers.report_job(initiator, report)
        except AccordError as exc:
            if exc.retryable:
                return self.book.failed(key, exc.message)
            log.info("job %s: %s refused the approval report: %s", job.name, initiator, exc.message)
        self.book.succeeded(key)
        await record_ack(self._store, job, initiator, wanted, actor=ACTOR)
        return None
