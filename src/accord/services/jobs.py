"""JobService: the job use cases behind every front door (native API, KusciaAPI routes, CLI).

- **submit**: a Job (native or KusciaJob document, or a spec) is checked *before* anything is stored, so
  the user learns at once what is wrong: the initiator must be this node's domain (a job runs where it
  was submitted); the DAG must be acyclic with known dependencies (11204 / 11205); every party must be a
  known domain (11206) and, for the others, reachable by a route (11206, naming the missing route).
  Then it is created through `ResourceService` (audited); the job controller takes it from there.
- **approve / reject** (at a participant): this node's decision on a job awaiting its approval; the job
  controller reports it to the initiator.  At the initiator there is nothing to approve (11207).
- **stop / suspend / restart / cancel / delete** may be issued at *any* party.  At the initiator the
  command is applied at once (`interop.jobs.apply_command`: Kuscia's guards, 11210 / 11211, and a new
  stage version) and the job controller tells every participant.  At a participant the command is
  forwarded to the initiator through the gateway and its answer returned, so a guard violation or an
  unreachable initiator (503) is reported to the user who issued it, and nothing is applied locally
  that the initiator did not accept.  A participant whose initiator is gone for good can still remove
  its own copy with the generic `accord delete job NAME`.

Every method raises only AccordError subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from accord.errors import ErrorCode, InvalidArgument, NotFound, Unavailable, invalid
from accord.interop.client import PeerClient
from accord.interop.commands import apply_command, record_approval
from accord.interop.common import is_mirror, participants, routes_from
from accord.interop.messages import JobCommand, JobCommandRequest
from accord.resources.documents import to_resource
from accord.resources.job import Job, StageCommand, Task
from accord.resources.meta import AnyResource
from accord.resources.phases import JobPhase
from accord.scheduling.dag import validate_job
from accord.services.resources import JOB_LABEL, ResourceService
from accord.settings import NodeSettings
from accord.store.base import Store


@dataclass(frozen=True)
class CommandResult:
    """What a stage command did: the job's phase and stage as the initiator recorded them."""

    job: str
    phase: JobPhase
    stage: StageCommand
    message: str
    initiator: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "phase": self.phase.value,
            "stage": self.stage.model_dump(mode="json"),
            "message": self.message,
            "initiator": self.initiator,
        }


def check_initiator(obj: AnyResource, domain: str) -> None:
    """A Job created through this node's API must be initiated by this node (a ResourceService validator)."""
    initiator = getattr(obj.spec, "initiator", domain)
    if initiator != domain:
        raise invalid(
            "Job",
            f"job {obj.meta.name!r} names {initiator} as its initiator, but this node is {domain}: "
            f"submit it at {initiator}'s node (every party's node takes part once it is submitted there)",
        )


class JobService:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        resources: ResourceService,
        peers: PeerClient | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._resources = resources
        self._peers = peers
        self.me = settings.domain

    # -- submit and read -------------------------------------------------------------------------------

    async def submit(self, doc: Mapping[str, Any] | AnyResource, actor: str) -> Job:
        obj = to_resource(dict(doc)) if isinstance(doc, Mapping) else doc
        if obj.kind != "Job":
            raise InvalidArgument(f"expected a Job (or KusciaJob) document, got {obj.kind}")
        job = cast(Job, obj)
        check_initiator(job, self.me)
        known = {self.me, *(d.meta.name for d in await self._store.list("Domain"))}
        validate_job(job.spec, known_domains=known)
        others = participants(job.spec, self.me)
        if others:
            if self._peers is None:
                raise InvalidArgument(
                    f"job {job.meta.name!r} involves {', '.join(others)}, but this node runs without the "
                    "interop module and can run single-domain jobs only",
                    code=ErrorCode.JOB_UNKNOWN_PARTY,
                )
            routes = await routes_from(self._store, self.me)
            missing = [d for d in others if d not in routes]
            if missing:
                raise InvalidArgument(
                    f"no route from {self.me} to {', '.join(missing)}: add one with `accord route add --to "
                    f"{missing[0]} --endpoint https://HOST:PORT` (and ask {missing[0]} for one back)",
                    code=ErrorCode.JOB_UNKNOWN_PARTY,
                )
        return cast(Job, await self._resources.create(job, actor, kind="Job"))

    async def get(self, name: str) -> Job:
        return cast(Job, await self._store.get("Job", name))

    async def tasks_of(self, name: str) -> list[Task]:
        return [cast(Task, t) for t in await self._store.list("Task", selector={JOB_LABEL: name})]

    async def find(self, name: str) -> Job | None:
        try:
            return await self.get(name)
        except NotFound:
            return None

    # -- approval --------------------------------------------------------------------------------------

    async def approve(self, name: str, actor: str, reason: str = "") -> Job:
        return await record_approval(self._store, self.me, name, True, reason, actor)

    async def reject(self, name: str, actor: str, reason: str = "") -> Job:
        return await record_approval(self._store, self.me, name, False, reason, actor)

    # -- stage commands ----------------------------------------------------------------------------------

    async def command(self, name: str, command: JobCommand, actor: str, reason: str = "") -> CommandResult:
        job = await self.get(name)
        if not is_mirror(job, self.me):
            updated = await apply_command(self._store, self.me, name, command, trigger=self.me, reason=reason)
            return CommandResult(
                name, updated.status.phase, updated.status.stage, updated.status.message, self.me
            )
        if self._peers is None:
            raise Unavailable(
                f"job {name!r} is initiated by {job.spec.initiator} and this node runs without the interop "
                "module, so the command cannot be sent there",
                code=ErrorCode.PEER_UNREACHABLE,
            )
        request = JobCommandRequest(job=name, command=command, reason=reason)
        reply = await self._peers.command(job.spec.initiator, request)
        return CommandResult(name, reply.phase, reply.stage, reply.message, job.spec.initiator)

    async def stop(self, name: str, actor: str, reason: str = "") -> CommandResult:
        return await self.command(name, JobCommand.STOP, actor, reason)

    async def suspend(self, name: str, actor: str, reason: str = "") -> CommandResult:
        return await self.command(name, JobCommand.SUSPEND, actor, reason)

    async def restart(self, name: str, actor: str, reason: str = "") -> CommandResult:
        return await self.command(name, JobCommand.RESTART, actor, reason)

    async def cancel(self, name: str, actor: str, reason: str = "") -> CommandResult:
        return await self.command(name, JobCommand.CANCEL, actor, reason)

    async def delete(self, name: str, actor: str, reason: str = "") -> CommandResult:
        """Delete the job at every party (the initiator tells the participants, then deletes its own)."""
        return await self.command(name, JobCommand.DELETE, actor, reason)
