"""KusciaAPI's job routes (kuscia.md section 5) over `JobService`, beside the native API.

All routes are `POST /api/v1/job/...` with snake_case JSON bodies and answer Kuscia's envelope
`{"status": {"code", "message", "details"}, "data": ...}`.  As KusciaAPI does over HTTP, a business error
is answered with HTTP 200 and its code in `status.code` (11202 job not found, 11210 suspend of a job that
is not Running, 11211 restart of a job that is neither Failed nor Suspended, ...); only a missing or wrong
token is an HTTP 401 (the node token in header `Token`, as KusciaAPI).

    job/create               {job_id, initiator, max_parallelism, custom_fields, tasks[...]} -> {job_id}
    job/query                {job_id} -> {job_id, initiator, max_parallelism, tasks, custom_fields, status}
    job/status/batchQuery    {job_ids[]} -> {jobs[{job_id, status}]}
    job/stop|suspend|restart|cancel  {job_id, reason} -> {job_id}
    job/approve              {job_id, result: APPROVE_RESULT_ACCEPT|APPROVE_RESULT_REJECT, reason} -> {job_id}
    job/delete               {job_id} -> {job_id}
    job/watch                {timeout_seconds} -> NDJSON stream of {type, object}

KusciaAPI's CreateJob has no schedule mode field and always schedules BestEffort; so does this route.
Accord's own phases map onto Kuscia's states: a job still `Initialized` is reported `Pending`, a task
or party `Preparing` is reported `Pending`.  Stage commands issued here at a participant are forwarded
to the initiator, as on the native API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from accord.api.streams import Signal, StreamCloser, relay
from accord.errors import AccordError, ErrorCode, InvalidArgument
from accord.interop.messages import JobCommand
from accord.resources.job import Job, Task
from accord.resources.phases import JobPhase, TaskPhase
from accord.services import Services

log = logging.getLogger("accord.api.kuscia")

ACTOR = "kusciaapi"
NDJSON = "application/x-ndjson"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Kuscia clients send `header{custom_headers}` too


class PartyIn(_Body):
    domain_id: str
    role: str = ""
    resources: dict[str, Any] | None = None
    bandwidth_limits: list[dict[str, Any]] = Field(default_factory=list)


class ScheduleIn(_Body):
    task_timeout_seconds: int | None = None
    resource_reserved_seconds: int | None = None
    resource_reallocation_interval_seconds: int | None = None


class TaskIn(_Body):
    app_image: str
    alias: str
    task_id: str = ""
    dependencies: list[str] = Field(default_factory=list)
    task_input_config: str = ""
    priority: int = 0
    tolerable: bool = False
    schedule_config: ScheduleIn | None = None
    parties: list[PartyIn] = Field(default_factory=list)


class CreateJobRequest(_Body):
    job_id: str
    initiator: str = ""
    max_parallelism: int = 1
    custom_fields: dict[str, str] = Field(default_factory=dict)
    tasks: list[TaskIn] = Field(default_factory=list)


class JobIdRequest(_Body):
    job_id: str
    reason: str = ""


class ApproveRequest(_Body):
    job_id: str
    result: str | int = "APPROVE_RESULT_ACCEPT"
    reason: str = ""


class BatchQueryRequest(_Body):
    job_ids: list[str] = Field(default_factory=list)


class WatchRequest(_Body):
    timeout_seconds: int = 0


def ok(data: Any) -> dict[str, Any]:
    return {"status": {"code": 0, "message": "success", "details": []}, "data": data}


def error(exc: AccordError) -> dict[str, Any]:
    return {"status": {"code": int(exc.code), "message": exc.message, "details": []}, "data": None}


def _time(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else ""


def job_state(phase: JobPhase) -> str:
    return "Pending" if phase == JobPhase.INITIALIZED else phase.value


def task_state(phase: TaskPhase) -> str:
    return "Pending" if phase == TaskPhase.PREPARING else phase.value


def _party_doc(task: Task, index: int) -> dict[str, Any]:
    party = task.status.parties[index]
    scopes = {p.name: p.scope for p in task.status.allocated_ports}
    return {
        "domain_id": party.domain,
        "role": party.role,
        "state": task_state(party.phase),
        "err_msg": party.message if party.phase == TaskPhase.FAILED else "",
        "endpoints": [
            {"port_name": name, "scope": scopes.get(name, "Cluster"), "endpoint": endpoint}
            for name, endpoint in sorted(party.endpoints.items())
        ],
    }


def status_doc(job: Job, tasks: list[Task]) -> dict[str, Any]:
    """Kuscia's JobStatusDetail for one job, from the job and the tasks this node holds."""
    s = job.status
    by_alias = {t.spec.alias: t for t in tasks}
    task_docs = []
    for template in job.spec.tasks:
        task = by_alias.get(template.alias)
        phase = s.task_status.get(template.alias)
        task_docs.append(
            {
                "task_id": task.meta.name
                if task
                else (template.task_id or f"{job.meta.name}-{template.alias}"),
                "alias": template.alias,
                "state": task_state(phase) if phase else "Pending",
                "err_msg": s.task_messages.get(template.alias, "") if phase == TaskPhase.FAILED else "",
                "create_time": _time(task.meta.created_at) if task else "",
                "start_time": _time(task.status.start_time) if task else "",
                "end_time": _time(task.status.completion_time) if task else "",
                "progress": task.status.progress if task else 0.0,
                "parties": [_party_doc(task, i) for i in range(len(task.status.parties))] if task else [],
            }
        )
    stage = s.stage
    return {
        "state": job_state(s.phase),
        "err_msg": s.message if s.phase in (JobPhase.FAILED, JobPhase.APPROVAL_REJECT) else "",
        "create_time": _time(job.meta.created_at),
        "start_time": _time(s.start_time),
        "end_time": _time(s.completion_time),
        "stage_status_list": [
            {"domain_id": d, "state": f"Job{stage.stage.value}Stage", "version": stage.version}
            for d in job.spec.parties()
        ],
        "approve_status_list": [{"domain_id": d, "state": a.value} for d, a in s.approve_status.items()],
        "tasks": task_docs,
    }


def job_doc(job: Job, tasks: list[Task]) -> dict[str, Any]:
    return {
        "job_id": job.meta.name,
        "initiator": job.spec.initiator,
        "max_parallelism": job.spec.max_parallelism,
        "custom_fields": dict(job.spec.custom_fields),
        "tasks": [
            {
                "app_image": t.app_image,
                "alias": t.alias,
                "task_id": t.task_id,
                "dependencies": list(t.dependencies),
                "task_input_config": t.input_config,
                "priority": t.priority,
                "tolerable": t.tolerable,
                "parties": [{"domain_id": p.domain, "role": p.role} for p in t.parties],
            }
            for t in job.spec.tasks
        ],
        "status": status_doc(job, tasks),
    }


def to_native(req: CreateJobRequest, me: str) -> dict[str, Any]:
    """A CreateJobRequest as a native Job document (BestEffort, as KusciaAPI schedules)."""
    tasks = []
    for t in req.tasks:
        task: dict[str, Any] = {
            "alias": t.alias,
            "task_id": t.task_id,
            "app_image": t.app_image,
            "dependencies": list(t.dependencies),
            "input_config": t.task_input_config,
            "priority": t.priority,
            "tolerable": t.tolerable,
            "parties": [
                {
                    "domain": p.domain_id,
                    "role": p.role,
                    **({"resources": p.resources} if p.resources else {}),
                    "bandwidth_limits": [
                        {"destination": b.get("destination_id", ""), "limit_kbps": b.get("limit_kbps", 0)}
                        for b in p.bandwidth_limits
                    ],
                }
                for p in t.parties
            ],
        }
        if t.schedule_config is not None:
            task["schedule_config"] = t.schedule_config.model_dump(exclude_none=True)
        tasks.append(task)
    return {
        "kind": "Job",
        "meta": {"name": req.job_id},
        "spec": {
            "initiator": req.initiator or me,
            "schedule_mode": "BestEffort",
            "max_parallelism": req.max_parallelism,
            "custom_fields": dict(req.custom_fields),
            "tasks": tasks,
        },
    }


async def _answer(call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    try:
        return ok(await call())
    except AccordError as exc:
        return error(exc)


def build_router(services: Services, closer: StreamCloser, *, heartbeat_seconds: float = 15.0) -> APIRouter:
    router = APIRouter(prefix="/api/v1/job", tags=["kusciaapi"])
    jobs = services.jobs

    async def detail(name: str) -> dict[str, Any]:
        return job_doc(await jobs.get(name), await jobs.tasks_of(name))

    @router.post("/create", summary="KusciaAPI CreateJob")
    async def create(req: CreateJobRequest) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            job = await jobs.submit(to_native(req, services.settings.domain), ACTOR)
            return {"job_id": job.meta.name}

        return await _answer(run)

    @router.post("/query", summary="KusciaAPI QueryJob")
    async def query(req: JobIdRequest) -> dict[str, Any]:
        return await _answer(lambda: detail(req.job_id))

    @router.post("/status/batchQuery", summary="KusciaAPI BatchQueryJobStatus")
    async def batch_query(req: BatchQueryRequest) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            out = []
            for name in req.job_ids:
                job = await jobs.get(name)
                out.append({"job_id": name, "status": status_doc(job, await jobs.tasks_of(name))})
            return {"jobs": out}

        return await _answer(run)

    def command_route(verb: str, command: JobCommand) -> None:
        async def run_command(req: JobIdRequest) -> dict[str, Any]:
            async def run() -> dict[str, Any]:
                await jobs.command(req.job_id, command, ACTOR, req.reason)
                return {"job_id": req.job_id}

            return await _answer(run)

        run_command.__name__ = f"kuscia_{verb}_job"
        router.post(f"/{verb}", summary=f"KusciaAPI {verb.capitalize()}Job")(run_command)

    for verb, command in (
        ("stop", JobCommand.STOP),
        ("suspend", JobCommand.SUSPEND),
        ("restart", JobCommand.RESTART),
        ("cancel", JobCommand.CANCEL),
        ("delete", JobCommand.DELETE),
    ):
        command_route(verb, command)

    @router.post("/approve", summary="KusciaAPI ApproveJob")
    async def approve(req: ApproveRequest) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            result = str(req.result).upper()
            if result in ("APPROVE_RESULT_ACCEPT", "1", "ACCEPT"):
                await jobs.approve(req.job_id, ACTOR, req.reason)
            elif result in ("APPROVE_RESULT_REJECT", "2", "REJECT"):
                await jobs.reject(req.job_id, ACTOR, req.reason)
            else:
                raise InvalidArgument(
                    f"result must be APPROVE_RESULT_ACCEPT or APPROVE_RESULT_REJECT, not {req.result!r}",
                    code=ErrorCode.INVALID_ARGUMENT,
                )
            return {"job_id": req.job_id}

        return await _answer(run)

    @router.post("/watch", summary="KusciaAPI WatchJob (NDJSON stream of {type, object})")
    async def watch(req: WatchRequest) -> StreamingResponse:
        since = await services.resources.revision()
        events = services.resources.watch("Job", since)

        async def lines() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + req.timeout_seconds if req.timeout_seconds > 0 else None
            idle = heartbeat_seconds if deadline is None else min(heartbeat_seconds, 1.0)
            async for item in relay(events, closer, idle_seconds=idle):
                if item is Signal.CLOSING:
                    return
                if isinstance(item, Signal):
                    yield b'{"type":"HEARTBEAT","object":null}\n'
                else:
                    obj: dict[str, Any] = {"job_id": item.name}
                    job = item.resource() if item.type != "DELETED" else None
                    if isinstance(job, Job):
                        obj["status"] = status_doc(job, await jobs.tasks_of(item.name))
                    yield json.dumps({"type": item.type, "object": obj}).encode() + b"\n"
                if deadline is not None and loop.time() >= deadline:
                    return

        return StreamingResponse(lines(), media_type=NDJSON)

    return router
