"""TaskController: coordinates multi-party tasks (at the initiator) and runs this node's party (everywhere).

**At the initiator** (task.spec.initiator is this node) the controller is the task's coordinator, and
the task's phase is the aggregate of its parties::

    Pending --> Preparing --every party prepared--> Running --every party succeeded--> Succeeded
                    |  a party refused / silent           |  a party failed / lifecycle expired
                    +------------------------------------ +--> Failed (naming the party and why)

- *Pending -> Preparing*: one PartyStatus per party is written, then every party is asked to prepare:
  this node's own party directly (`LocalParty.prepare`), each peer with a `TaskPrepare` message (retried
  with backoff until answered).  Prepared parties report their endpoints.
- *All-or-nothing*: only when every party is prepared is the task moved to Running; then this node's
  engine is started and `TaskStart` sent to every other party at once (a task of this node alone is
  Running only once its engine runs, pid recorded).  A party that refuses fails the task
  at once; one that has not prepared `resource_reserved_seconds` after the task was created fails it
  too, with a message naming every such party and the last error seen (e.g. its node is unreachable).
- *Running*: this node's engine is polled; peers report their parties (`PartyTaskReport`, merged by the
  inbox) and answer `TaskStart` with their status.  The first failed party fails the task ("party bob:
  engine exited with code 3"); when all succeeded it succeeds.  A task still unfinished
  `task_timeout_seconds` after its creation fails ("did not finish within N s"), so engines that wait for
  a peer that never connects cannot hang a job.
- *Succeeded / Failed*: this node's engine is stopped if it still runs, its services unregistered and
  ports released, and every peer is sent `TaskRelease` (the final phase and message) until it
  acknowledges, so they do the same.  A task failed by its job (Strict mode, a stop command) ends here
  as well.

**At a participant** the task is a mirror created by the initiator's `TaskPrepare` (see `inbox.py`);
its phase is the initiator's (Preparing at prepare, Running at start, final at release).  The
controller watches this node's engine, reports every change of this node's party to the initiator
(`PartyTaskReport`, retried until acknowledged: the digest of the last acknowledged report is kept in
`status.sync[initiator]`), stops the engine and cleans up once the task is released, and applies its own
lifecycle limit (`task_timeout_seconds` plus a grace) in case the initiator went silent for good.

**Restart safety.**  Nothing that must survive is kept in memory: what to send is derived from the
task's stored status and the digests of what peers acknowledged; only retry pacing (`SendBook`) and the
gateway registrations are in memory, and both are rebuilt (`LocalParty.ensure_services`).  Engines run
in their own sessions and are re-adopted through the runtime's on-disk records.  A node without a
`PeerClient` runs single-node tasks only; a task naming another domain then fails saying so.

`record_progress` is what the node's API calls when an engine reports progress with its task token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import cast

from accord.controllers.party import (
    ACTOR,
    LocalParty,
    ensure_parties,
    judge,
    merge_party,
    party_of,
)
from accord.controllers.queue import Outcome
from accord.controllers.status import record_ack, update_status
from accord.errors import AccordError, Conflict, ErrorCode, NotFound, Unauthenticated, invalid
from accord.gateway import ServiceRegistry
from accord.interop.client import PeerClient, SendBook
from accord.interop.messages import (
    ORIGIN_UID,
    STAGE_VERSION_LABEL,
    PartyReply,
    PartyTaskReport,
    TaskPrepare,
    TaskRelease,
    TaskStart,
    digest,
)
from accord.resources.job import Job, PartyStatus, Task
from accord.resources.meta import utcnow
from accord.resources.phases import TASK_TERMINAL, TaskPhase
from accord.runtimes.base import Runtime
from accord.runtimes.contract import TOKEN_ANNOTATION, token_sha256
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

_MAX_STEPS = 6
_MAX_PROGRESS_MESSAGE = 1000
PARTICIPANT_GRACE_SECONDS = 10.0
"""A participant gives up on a silent initiator this long after the task's own lifecycle limit."""
RELEASE_GIVE_UP_SECONDS = 600.0
"""Stop telling an unreachable peer about a finished task after this long (its own limit stops it)."""

Step = Callable[[Task], Awaitable["Task | Outcome"]]


class TaskController:
    """Reconciles Tasks; see the module docstring."""

    kind = "Task"

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        runtime: Runtime,
        *,
        peers: PeerClient | None = None,
        registry: ServiceRegistry | None = None,
        egress_port: Callable[[], int] | None = None,
        poll_interval: float = 0.5,
        stop_grace: float = 5.0,
    ) -> None:
        self._store = store
        self._settings = settings
        self.me = settings.domain
        self._runtime = runtime
        self._peers = peers
        self._poll_interval = poll_interval
        if egress_port is None and peers is not None:
            egress_port = lambda: peers.egress_port  # noqa: E731
        self.party = LocalParty(
            store, settings, runtime, registry=registry, egress_port=egress_port, stop_grace=stop_grace
        )
        self.book = SendBook()
        self._coordinator: dict[TaskPhase, Step] = {
            TaskPhase.PENDING: self._begin,
            TaskPhase.PREPARING: self._reserve,
            TaskPhase.RUNNING: self._run,
            TaskPhase.SUCCEEDED: self._finish_up,
            TaskPhase.FAILED: self._finish_up,
        }

    async def extra_names(self) -> list[str]:
        """Tasks whose engines still run (maybe deleted while the node was down)."""
        return await self._runtime.running_tasks()

    def attach(self, enqueue: Callable[[str], None]) -> None:
        """An engine that ends wakes its task at once; the poll every `poll_interval` is the safety net."""
        self._runtime.on_exit(enqueue)

    async def reconcile(self, name: str) -> Outcome:
        try:
            task = cast(Task, await self._store.get("Task", name))
        except NotFound:
            await self.party.orphan(name)
            self.book.forget(lambda key: isinstance(key, tuple) and key[0] == name)
            return Outcome.done()
        if task.spec.initiator != self.me:
            return await self._participate(task)
        for _ in range(_MAX_STEPS):
            phase = task.status.phase
            result = await self._coordinator[phase](task)
            if isinstance(result, Outcome):
                return result
            task = result
        return Outcome.retry(self._poll_interval)

    # -- coordinator ----------------------------------------------------------------------------

    def _remote(self, task: Task) -> list[PartyStatus]:
        return [p for p in task.status.parties if p.domain != self.me]

    async def _begin(self, task: Task) -> Task | Outcome:
        foreign = sorted({p.domain for p in task.spec.parties} - {self.me})
        if foreign and self._peers is None:
            return await self._fail(
                task,
                f"task involves domain(s) {', '.join(foreign)} besides this node's domain {self.me!r}; "
                "cross-domain tasks need the interop module, which this node does not run",
            )
        _, problem = self.party.index(task)
        if problem:
            return await self._fail(task, problem)

        def to_preparing(draft: Task) -> bool:
            if draft.status.phase != TaskPhase.PENDING:
                return False
            ensure_parties(draft)
            draft.status.phase = TaskPhase.PREPARING
            draft.status.message = ""
            return True

        return await update_status(self._store, task, to_preparing, actor=ACTOR)

    async def _reserve(self, task: Task) -> Task | Outcome:
        own = party_of(task, self.me)
        local = own is not None and own.phase == TaskPhase.PENDING
        pending = [p.domain for p in self._remote(task) if p.phase == TaskPhase.PENDING]
        if pending:
            prepare = TaskPrepare(
                job=task.spec.job,
                job_uid=await self._job_uid(task),
                task=task.meta.name,
                task_uid=task.meta.uid,
                spec=task.spec,
                stage_version=int(task.meta.labels.get(STAGE_VERSION_LABEL, "0") or 0),
            )

            def prepare_peer(peer: str) -> Awaitable[PartyReply | None]:
                return self._prepare_peer(peer, prepare)

            if local:  # this party and the peers prepare at once
                await asyncio.gather(self.party.prepare(task), self._exchange(task, pending, prepare_peer))
                task = cast(Task, await self._store.get("Task", task.meta.name))
            else:
                task = await self._exchange(task, pending, prepare_peer)
        elif local:
            task = await self.party.prepare(task)
        task = await self._judge(task)
        if task.status.phase != TaskPhase.PREPARING:
            return task
        unprepared = [p for p in task.status.parties if p.phase == TaskPhase.PENDING]
        if not unprepared:
            return await self._to_running(task)
        limit = task.spec.schedule_config.resource_reserved_seconds
        left = self._seconds_left(task, limit)
        if left <= 0:
            names = ", ".join(p.domain for p in unprepared)
            errors = [
                f"{p.domain}: {err}"
                for p in unprepared
                if (err := self.book.last_error((task.meta.name, p.domain)))
            ]
            noun = "party" if len(unprepared) == 1 else "parties"
            return await self._fail(
                task,
                f"{noun} {names} did not prepare within {limit} s (resource_reserved_seconds)"
                + (f": {'; '.join(errors)}" if errors else ""),
            )
        return Outcome.retry(self._wait(task, [p.domain for p in unprepared], left))

    async def _to_running(self, task: Task) -> Task:
        own = party_of(task, self.me)
        if own is not None and own.phase == TaskPhase.PREPARING and not self._remote(task):
            # A task of this node alone: Running means its engine runs (pid and work dir recorded).  With
            # peers, Running means "start decided", and every party is started at once in `_run`.
            task = await self.party.start(task)
            task = await self._judge(task)
            if task.status.phase != TaskPhase.PREPARING:
                return task

        def to_running(draft: Task) -> bool:
            if draft.status.phase != TaskPhase.PREPARING:
                return False
            draft.status.phase = TaskPhase.RUNNING
            draft.status.start_time = draft.status.start_time or utcnow()
            return True

        return await update_status(self._store, task, to_running, actor=ACTOR)

    async def _run(self, task: Task) -> Task | Outcome:
        own = party_of(task, self.me)
        waiting = [p.domain for p in self._remote(task) if p.phase == TaskPhase.PREPARING]
        start = TaskStart(task=task.meta.name, task_uid=task.meta.uid)

        def start_peer(peer: str) -> Awaitable[PartyReply | None]:
            return self._start_peer(peer, start)

        if own is not None and own.phase == TaskPhase.PREPARING:
            # This party and the peers start together: the engines find each other sooner.
            if waiting:
                await asyncio.gather(self.party.start(task), self._exchange(task, waiting, start_peer))
                task = cast(Task, await self._store.get("Task", task.meta.name))
            else:
                task = await self.party.start(task)
        else:
            if own is not None and own.phase == TaskPhase.RUNNING:
                self.party.ensure_services(task)
                task = await self.party.watch(task) or task
            if waiting:
                task = await self._exchange(task, waiting, start_peer)
        task = await self._judge(task)
        if task.status.phase != TaskPhase.RUNNING:
            return task
        limit = task.spec.schedule_config.task_timeout_seconds
        left = self._seconds_left(task, limit)
        if left <= 0:
            unfinished = ", ".join(
                f"{p.domain} ({p.phase.value})" for p in task.status.parties if p.phase not in TASK_TERMINAL
            )
            return await self._fail(
                task, f"did not finish within {limit} s (task_timeout_seconds); unfinished: {unfinished}"
            )
        own = party_of(task, self.me)
        delay = self._poll_interval if own is not None and own.phase == TaskPhase.RUNNING else left
        return Outcome.retry(min(delay, self._wait(task, waiting, left)))

    async def _finish_up(self, task: Task) -> Task | Outcome:
        own = party_of(task, self.me)
        note = task.status.message if task.status.phase == TaskPhase.FAILED else "task finished"
        if own is not None and own.phase not in TASK_TERMINAL:
            task = await self.party.stop(task, note if note.startswith("stopped") else f"stopped: {note}")
        else:
            await self.party.stop(task, note)
        if self._peers is None:
            return Outcome.done()
        release = TaskRelease(
            task=task.meta.name,
            task_uid=task.meta.uid,
            phase=task.status.phase,
            message=task.status.message,
            parties=list(task.status.parties),
        )
        wanted = digest(release.model_copy(update={"parties": []}))
        todo = [p.domain for p in self._remote(task) if task.status.sync.get(p.domain) != wanted]
        if not todo:
            return Outcome.done()
        finished = task.status.completion_time or utcnow()
        if utcnow() - finished > timedelta(seconds=RELEASE_GIVE_UP_SECONDS):
            log.warning("task %s: giving up telling %s that it ended", task.meta.name, ", ".join(todo))
            return Outcome.done()
        task = await self._exchange(
            task, todo, lambda peer: self._release_peer(peer, release), acked=wanted, refusal_fails=False
        )
        left = [p.domain for p in self._remote(task) if task.status.sync.get(p.domain) != wanted]
        return Outcome.retry(self._wait(task, left, RELEASE_GIVE_UP_SECONDS)) if left else Outcome.done()

    # -- exchanging messages --------------------------------------------------------------------------

    async def _job_uid(self, task: Task) -> str:
        try:
            job = cast(Job, await self._store.get("Job", task.spec.job))
        except NotFound:
            return ""
        return job.meta.uid

    async def _prepare_peer(self, peer: str, msg: TaskPrepare) -> PartyReply:
        assert self._peers is not None
        return await self._peers.prepare(peer, msg)

    async def _start_peer(self, peer: str, msg: TaskStart) -> PartyReply:
        assert self._peers is not None
        return await self._peers.start(peer, msg)

    async def _release_peer(self, peer: str, msg: TaskRelease) -> PartyReply | None:
        assert self._peers is not None
        try:
            return await self._peers.release(peer, msg)
        except NotFound:
            return None  # it never prepared, or already forgot the task: nothing to release there

    async def _exchange(
        self,
        task: Task,
        peers: list[str],
        send: Callable[[str], Awaitable[PartyReply | None]],
        *,
        acked: str = "",
        refusal_fails: bool = True,
    ) -> Task:
        """Send one message to each due peer at once; merge their answers in one write.

        A retryable error (the peer is unreachable) is retried later with backoff; any other error is the
        peer's refusal and, with `refusal_fails`, fails that peer's party with the peer's reason.
        """
        due = [p for p in peers if self.book.due((task.meta.name, p))]
        if not due:
            return task
        results = await asyncio.gather(*(send(p) for p in due), return_exceptions=True)
        updates: dict[str, PartyStatus] = {}
        done: list[str] = []
        for peer, result in zip(due, results, strict=True):
            key = (task.meta.name, peer)
            if isinstance(result, AccordError) and not result.retryable:
                # The peer refused for good (it has no such job, or not this incarnation of it).
                self.book.succeeded(key)
                if refusal_fails:
                    updates[peer] = PartyStatus(
                        domain=peer, phase=TaskPhase.FAILED, message=f"refused: {result.message}"
                    )
                done.append(peer)
            elif isinstance(result, AccordError):
                delay = self.book.failed(key, result.message)
                log.info(
                    "task %s: %s did not answer (%s); retry in %.1f s", task.meta.name, peer, result, delay
                )
            elif isinstance(result, BaseException):
                self.book.failed(key, repr(result))
                log.warning("task %s: sending to %s failed: %r", task.meta.name, peer, result)
            else:
                self.book.succeeded(key)
                done.append(peer)
                if result is not None and result.party.domain == peer:
                    updates[peer] = result.party
        if not updates and not (acked and done):
            return task

        def merge(draft: Task) -> bool:
            ensure_parties(draft)
            changed = False
            for peer, status in updates.items():
                current = party_of(draft, peer)
                if current is not None and merge_party(current, status):
                    changed = True
            if acked:
                for peer in done:
                    if draft.status.sync.get(peer) != acked:
                        draft.status.sync[peer] = acked
                        changed = True
            return changed

        return await update_status(self._store, task, merge, actor=ACTOR)

    async def _judge(self, task: Task) -> Task:
        phase, message = judge(task.status.parties)
        if phase is None or task.status.phase in TASK_TERMINAL:
            return task
        if phase == TaskPhase.SUCCEEDED and task.status.phase != TaskPhase.RUNNING:
            return task

        def apply(draft: Task) -> bool:
            if draft.status.phase in TASK_TERMINAL:
                return False
            verdict, text = judge(draft.status.parties)
            if verdict is None or (
                verdict == TaskPhase.SUCCEEDED and draft.status.phase != TaskPhase.RUNNING
            ):
                return False
            draft.status.phase = verdict
            draft.status.message = text
            draft.status.completion_time = utcnow()
            if verdict == TaskPhase.SUCCEEDED:
                draft.status.progress = 1.0
            return True

        log.info("task %s: %s (%s)", task.meta.name, phase.value, message)
        return await update_status(self._store, task, apply, actor=ACTOR)

    async def _fail(self, task: Task, message: str) -> Task:
        def fail(draft: Task) -> bool:
            if draft.status.phase in TASK_TERMINAL:
                return False
            ensure_parties(draft)
            draft.status.phase = TaskPhase.FAILED
            draft.status.message = message
            draft.status.completion_time = utcnow()
            own = party_of(draft, self.me)
            if own is not None and own.phase not in TASK_TERMINAL:
                own.phase, own.message = TaskPhase.FAILED, message
            return True

        log.info("task %s: Failed (%s)", task.meta.name, message)
        return await update_status(self._store, task, fail, actor=ACTOR)

    def _seconds_left(self, task: Task, limit: float) -> float:
        created = task.meta.created_at or utcnow()
        return limit - (utcnow() - created).total_seconds()

    def _wait(self, task: Task, peers: list[str], left: float) -> float:
        backoff = self.book.wait([(task.meta.name, p) for p in peers])
        delay = min(left, backoff if backoff is not None else self._poll_interval)
        return max(0.01, delay)

    # -- participant ----------------------------------------------------------------------------------

    async def _participate(self, task: Task) -> Outcome:
        own = party_of(task, self.me)
        if own is None:
            return Outcome.done()
        delay: float | None = None
        limit = task.spec.schedule_config.task_timeout_seconds + PARTICIPANT_GRACE_SECONDS
        if task.status.phase in TASK_TERMINAL or own.phase in TASK_TERMINAL:
            why = task.status.message or "task ended"
            task = await self.party.stop(task, why if why.startswith("stopped") else f"stopped: {why}")
        elif self._seconds_left(task, limit) <= 0:
            task = await self.party.stop(
                task, f"stopped: no word from the initiator {task.spec.initiator} within {limit:g} s"
            )
        else:
            if own.phase in (TaskPhase.PREPARING, TaskPhase.RUNNING):
                self.party.ensure_services(task)
            if own.phase == TaskPhase.RUNNING:
                watched = await self.party.watch(task)
                if watched is None:
                    delay = self._poll_interval
                else:
                    task = watched
            if delay is None:
                delay = max(0.01, self._seconds_left(task, limit))
        reported = await self._report(task)
        if reported is not None:
            delay = reported if delay is None else min(delay, reported)
        return Outcome.retry(delay) if delay is not None else Outcome.done()

    async def _report(self, task: Task) -> float | None:
        """Tell the initiator about this node's party if it changed since the last acknowledgement."""
        own = party_of(task, self.me)
        if own is None or self._peers is None:
            return None
        initiator = task.spec.initiator
        state = own.model_copy()
        wanted = digest(state)
        if task.status.sync.get(initiator) == wanted:
            return None
        key = (task.meta.name, initiator)
        if not self.book.due(key):
            return self.book.wait([key])
        report = PartyTaskReport(
            task=task.meta.name, task_uid=task.meta.annotations.get(ORIGIN_UID, ""), party=state
        )
        try:
            await self._peers.report_task(initiator, report)
        except (Conflict, NotFound, Unauthenticated) as exc:
            log.info("task %s: %s no longer wants reports (%s)", task.meta.name, initiator, exc)
        except AccordError as exc:
            return self.book.failed(key, exc.message)
        self.book.succeeded(key)
        await record_ack(self._store, task, initiator, wanted, actor=ACTOR)
        return None


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
