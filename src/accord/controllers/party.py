"""LocalParty: this node's own party of a task: prepare (ports, services), start (engine), watch, stop.

Every node runs its own party of a task the same way, whether the task was created here by the job
controller (this node is the initiator) or by a peer's `TaskPrepare` (this node is a participant):

    own party:  Pending --prepare--> Preparing --start--> Running --engine ended--> Succeeded | Failed

- **prepare**: the AppImage must be known here, and the engine environment it runs from installed
  (`runtimes.engines.engine_problem`), else the party fails saying so; one port per AppImage
  port is allocated; every Cluster-scope port is registered in the gateway as the service
  `<task>-[<role>-]0-<port>` open to the task's *other* parties (Domain-scope ports to this domain
  only), and the PTP session `<task>` is opened for the task's parties; the ports, the endpoints and the
  work dir are written to the task's status.
- **start**: a one-time token (its SHA-256 stored first, in `accord/task-token-sha256`) and the engine
  contract go to the runtime, plus `ACCORD_EGRESS=http://127.0.0.1:<egress port>` so the engine reaches
  its peers' endpoints (`<service>.<peer>.svc`) through the gateway.  If an engine is already on record
  for this task run (a node that died between launching it and writing Running), it is adopted instead
  of starting a second one.
- **watch**: exit code 0 -> Succeeded; otherwise Failed, with "engine exited with code N" or "engine
  crashed (killed by signal ...)" and the tail of its log; an engine neither running nor leaving an exit
  status is "engine lost while the node was down".
- **stop / cleanup**: the engine (if it runs) is stopped, the party marked Failed with the reason if it
  had not finished, the task's gateway services unregistered and its port reservations released.

All four are idempotent and serialised per task by an in-memory lock, because two callers may act on
the same task at once (the task controller and a peer's retried message).  Registrations live in the
gateway's memory, so after a node restart `ensure_services` puts them back for every party that is
still Preparing or Running; the runtime re-adopts running engines from its on-disk records.

`merge_party` and `judge` are the pure rules every node uses to combine party statuses: a party only
moves forward (Pending < Preparing < Running < Succeeded/Failed) and a finished party never changes; a
task fails as soon as one party fails (naming it) and succeeds when all parties did.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import cast

from accord.controllers.inputs import input_problem
from accord.controllers.status import update_status
from accord.errors import AccordError, Conflict, ErrorCode, NotFound
from accord.gateway import ServiceRegistry
from accord.resources.appimage import AppImage
from accord.resources.job import PartyStatus, Task
from accord.resources.meta import utcnow
from accord.resources.phases import TASK_TERMINAL, TaskPhase
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec, Runtime
from accord.runtimes.contract import TOKEN_ANNOTATION, party_endpoints, service_name, token_sha256
from accord.runtimes.engines import engine_problem
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

ACTOR = "controller/task"
EGRESS_ENV = "ACCORD_EGRESS"

RANK: dict[TaskPhase, int] = {
    TaskPhase.PENDING: 0,
    TaskPhase.PREPARING: 1,
    TaskPhase.RUNNING: 2,
    TaskPhase.SUCCEEDED: 3,
    TaskPhase.FAILED: 3,
}


def merge_party(current: PartyStatus, new: PartyStatus) -> bool:
    """Fold a newer report of one party into `current`; False if it is older or changes nothing."""
    if current.phase in TASK_TERMINAL or RANK[new.phase] < RANK[current.phase]:
        return False
    before = current.model_dump()
    current.phase = new.phase
    current.message = new.message
    current.exit_code = new.exit_code
    current.crashed = new.crashed
    if new.endpoints:
        current.endpoints = dict(new.endpoints)
    return current.model_dump() != before


def judge(parties: list[PartyStatus]) -> tuple[TaskPhase | None, str]:
    """The task's phase from its parties: the first failed party fails it; all succeeded succeed it."""
    if not parties:
        return None, ""
    single = len(parties) == 1
    for party in parties:
        if party.phase == TaskPhase.FAILED:
            return TaskPhase.FAILED, party.message if single else f"party {party.domain}: {party.message}"
    if all(p.phase == TaskPhase.SUCCEEDED for p in parties):
        return TaskPhase.SUCCEEDED, parties[0].message if single else f"all {len(parties)} parties succeeded"
    return None, ""


def ensure_parties(task: Task) -> bool:
    """Give the status one PartyStatus per spec party (once); True if it added them."""
    if task.status.parties:
        return False
    task.status.parties = [PartyStatus(domain=p.domain, role=p.role) for p in task.spec.parties]
    return True


def party_of(task: Task, domain: str) -> PartyStatus | None:
    for party in task.status.parties:
        if party.domain == domain:
            return party
    return None


class LocalParty:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        runtime: Runtime,
        *,
        registry: ServiceRegistry | None = None,
        egress_port: Callable[[], int] | None = None,
        stop_grace: float = 5.0,
    ) -> None:
        self.store = store
        self.me = settings.domain
        self.settings = settings
        self.runtime = runtime
        self.registry = registry
        self.egress_port = egress_port
        self.stop_grace = stop_grace
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, task: str) -> asyncio.Lock:
        return self._locks.setdefault(task, asyncio.Lock())

    def index(self, task: Task) -> tuple[int, str]:
        """(index of this node's party or -1, "") or (-1, why this node cannot run its party)."""
        indices = [i for i, p in enumerate(task.spec.parties) if p.domain == self.me]
        if len(indices) > 1:
            roles = ", ".join(repr(task.spec.parties[i].role) for i in indices)
            return -1, (
                f"domain {self.me!r} takes part {len(indices)} times (roles {roles}); running several "
                "parties of one domain in one task is not supported yet"
            )
        return (indices[0] if indices else -1), ""

    async def _app_image(self, task: Task) -> AppImage | str:
        try:
            return cast(AppImage, await self.store.get("AppImage", task.spec.app_image))
        except NotFound:
            return (
                f"AppImage {task.spec.app_image!r} not found; create it first "
                "(`accord get appimages` lists the known ones)"
            )

    async def _fresh(self, task: Task) -> Task:
        return cast(Task, await self.store.get("Task", task.meta.name))

    async def set_own(self, task: Task, phase: TaskPhase, message: str, **fields: object) -> Task:
        """Move this node's party forward (never back) with a message; other fields as given."""

        def apply(draft: Task) -> bool:
            ensure_parties(draft)
            own = party_of(draft, self.me)
            if own is None or own.phase in TASK_TERMINAL or RANK[phase] < RANK[own.phase]:
                return False
            own.phase, own.message = phase, message
            for key, value in fields.items():
                setattr(own, key, value)
            return True

        return await update_status(self.store, task, apply, actor=ACTOR)

    # -- prepare ------------------------------------------------------------------------------------

    async def prepare(self, task: Task) -> Task:
        async with self.lock(task.meta.name):
            task = await self._fresh(task)
            index, problem = self.index(task)
            if problem:
                return await self.set_own(task, TaskPhase.FAILED, problem)
            if index < 0:
                return task
            own = party_of(task, self.me)
            if own is not None and own.phase != TaskPhase.PENDING:
                self.ensure_services(task)
                return task
            app = await self._app_image(task)
            if isinstance(app, str):
                return await self.set_own(task, TaskPhase.FAILED, app)
            missing = await asyncio.to_thread(engine_problem, app, self.me)
            if missing:  # an engine that runs from its own environment, not installed on this node
                return await self.set_own(task, TaskPhase.FAILED, missing)
            bad_input = await input_problem(self.store, task, self.me)
            if bad_input:
                return await self.set_own(task, TaskPhase.FAILED, bad_input)
            try:
                ports = await self.runtime.allocate_ports(task.meta.name, app.spec.ports)
            except AccordError as exc:
                return await self.set_own(task, TaskPhase.FAILED, f"cannot allocate ports: {exc.message}")
            work_dir = str(self.runtime.work_dir(task.meta.name))
            party = task.spec.parties[index]
            endpoints = party_endpoints(task.meta.name, party, app.spec.ports, ports, is_self=True)

            def prepared(draft: Task) -> bool:
                ensure_parties(draft)
                mine = party_of(draft, self.me)
                if mine is None or mine.phase != TaskPhase.PENDING:
                    return False
                mine.phase, mine.message, mine.endpoints = TaskPhase.PREPARING, "", endpoints
                draft.status.allocated_ports = list(ports)
                draft.status.work_dir = work_dir
                return True

            task = await update_status(self.store, task, prepared, actor=ACTOR)
            try:
                self.ensure_services(task)
            except AccordError as exc:
                return await self.set_own(task, TaskPhase.FAILED, f"cannot register services: {exc.message}")
            return task

    def ensure_services(self, task: Task) -> None:
        """Register the task's gateway services and PTP session for this party (again, after a restart).

        The PTP session (the BFIA transport that engines in "blackbox" link mode use instead of a port) is
        named after the task and open to the task's parties only; `unregister_task` drops it with the
        services when the task ends.
        """
        if self.registry is None:
            return
        index, _ = self.index(task)
        if index < 0:
            return
        parties = {p.domain for p in task.spec.parties}
        if self.registry.session(task.meta.name) is None:
            self.registry.register_session(task.meta.name, parties=parties, task=task.meta.name)
        role = task.spec.parties[index].role
        others = parties - {self.me}
        for port in task.status.allocated_ports:
            if port.scope == "Local":
                continue
            name = service_name(task.meta.name, port.name, role)
            entry = self.registry.get(name)
            allowed = others if port.scope == "Cluster" else set()
            if entry is not None and entry.port == port.port and entry.task == task.meta.name:
                continue
            self.registry.register(name, port.port, allowed=allowed, task=task.meta.name)

    # -- start --------------------------------------------------------------------------------------

    async def start(self, task: Task) -> Task:
        async with self.lock(task.meta.name):
            task = await self._fresh(task)
            own = party_of(task, self.me)
            if own is None or own.phase in (TaskPhase.RUNNING, *TASK_TERMINAL):
                return task
            if own.phase != TaskPhase.PREPARING:
                raise Conflict(
                    f"task {task.meta.name!r}: {self.me} cannot start before it is prepared",
                    code=ErrorCode.TASK_INVALID,
                )
            self.ensure_services(task)
            current = await self.runtime.poll(task.meta.name, task.meta.uid)
            if current.state is not EngineState.NOT_STARTED:
                log.info("task %s: adopting engine started before (%s)", task.meta.name, current.describe())
                return await self._running(task, current)
            app = await self._app_image(task)
            if isinstance(app, str):
                return await self.set_own(task, TaskPhase.FAILED, app)
            token = secrets.token_urlsafe(32)
            digest = token_sha256(token)

            def remember_token(draft: Task) -> bool:
                mine = party_of(draft, self.me)
                if mine is None or mine.phase != TaskPhase.PREPARING:
                    return False
                draft.meta.annotations[TOKEN_ANNOTATION] = digest
                return True

            task = await update_status(self.store, task, remember_token, actor=ACTOR)
            own = party_of(task, self.me)
            if own is None or own.phase != TaskPhase.PREPARING:
                return task
            index, _ = self.index(task)
            extra = {EGRESS_ENV: f"http://127.0.0.1:{self.egress_port()}"} if self.egress_port else {}
            launch = LaunchSpec(
                task=task.meta.name,
                uid=task.meta.uid,
                domain=self.me,
                app_image=app,
                input_config=task.spec.input_config,
                parties=list(task.spec.parties),
                self_party_index=index,
                ports=list(task.status.allocated_ports),
                node_api=self.settings.api_url,
                token=token,
                extra_env=extra,
            )
            try:
                started = await self.runtime.start(launch)
            except (AccordError, OSError) as exc:
                reason = exc.message if isinstance(exc, AccordError) else str(exc)
                return await self.set_own(task, TaskPhase.FAILED, f"engine could not start: {reason}")
            return await self._running(task, started)

    async def _running(self, task: Task, engine: EngineStatus) -> Task:
        def to_running(draft: Task) -> bool:
            mine = party_of(draft, self.me)
            if mine is None or mine.phase != TaskPhase.PREPARING:
                return False
            mine.phase, mine.message = TaskPhase.RUNNING, ""
            draft.status.pid = engine.pid
            draft.status.work_dir = engine.work_dir or draft.status.work_dir
            draft.status.start_time = draft.status.start_time or utcnow()
            return True

        return await update_status(self.store, task, to_running, actor=ACTOR)

    # -- watch, stop, cleanup -----------------------------------------------------------------------

    async def watch(self, task: Task) -> Task | None:
        """Record the engine's end on this party; None while it still runs."""
        own = party_of(task, self.me)
        if own is None or own.phase != TaskPhase.RUNNING:
            return task
        engine = await self.runtime.poll(task.meta.name, task.meta.uid)
        if engine.state is EngineState.RUNNING:
            return None
        if engine.state is EngineState.NOT_STARTED:
            engine = EngineStatus(EngineState.LOST, detail="the runtime has no record of the engine")
        phase = TaskPhase.SUCCEEDED if engine.succeeded else TaskPhase.FAILED
        log.info("task %s: %s's engine ended: %s", task.meta.name, self.me, engine.describe())
        await self.runtime.release(task.meta.name)
        return await self.set_own(
            task, phase, engine.describe(), exit_code=engine.exit_code, crashed=engine.crashed
        )

    async def stop(self, task: Task, why: str) -> Task:
        """Stop the engine if it runs, fail this party (if unfinished) with `why`, and clean up."""
        async with self.lock(task.meta.name):
            engine = await self.runtime.poll(task.meta.name, task.meta.uid)
            if engine.state is EngineState.RUNNING:
                log.info("task %s: stopping %s's engine (%s)", task.meta.name, self.me, why)
                await self.runtime.stop(task.meta.name, self.stop_grace, task.meta.uid)
            own = party_of(task, self.me)
            if own is not None and own.phase not in TASK_TERMINAL:
                try:
                    task = await self.set_own(task, TaskPhase.FAILED, why)
                except NotFound:
                    pass
            await self.cleanup(task.meta.name)
            return task

    async def cleanup(self, name: str) -> None:
        if self.registry is not None:
            self.registry.unregister_task(name)
        await self.runtime.release(name)

    async def orphan(self, name: str) -> None:
        """The task is gone from the store: stop its engine if one still runs, and clean up."""
        async with self.lock(name):
            engine = await self.runtime.poll(name)
            if engine.state is EngineState.RUNNING:
                log.info("task %s was deleted but its engine runs: stopping it", name)
                await self.runtime.stop(name, self.stop_grace)
            await self.cleanup(name)
        self._locks.pop(name, None)
