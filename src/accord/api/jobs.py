"""Native job command routes (node token): submit, approve/reject, stop/suspend/restart/cancel, delete.

Thin over `JobService`: every rule (initiator check, DAG and route checks at submit, Kuscia's stage
guards, forwarding a command issued at a participant to the initiator) lives in the service, so the
KusciaAPI routes (`api/kuscia_jobs.py`) behave identically.

    POST   /v1/jobs                          submit a Job or KusciaJob document   -> the Job (201)
    POST   /v1/jobs/{name}/approve|reject    {reason}                             -> the Job
    POST   /v1/jobs/{name}/stop|suspend|restart|cancel  {reason}                  -> {job, phase, stage, ...}
    DELETE /v1/jobs/{name}                   delete at every party                -> {job, phase, stage, ...}

Reading jobs stays on the resource routes (`GET /v1/resources/jobs/{name}`, `/v1/watch/jobs`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from accord.api.errors import ERROR_RESPONSES
from accord.interop.messages import JobCommand
from accord.services import Services

ACTOR = "user"


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1000, description="why (recorded in the audit log and the job status)")


_COMMANDS = {
    "stop": JobCommand.STOP,
    "suspend": JobCommand.SUSPEND,
    "restart": JobCommand.RESTART,
    "cancel": JobCommand.CANCEL,
}


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
    jobs = services.jobs

    @router.post("", status_code=201, summary="Submit a job (native Job or KusciaJob document)")
    async def submit(doc: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return (await jobs.submit(doc, ACTOR)).to_document()

    @router.post("/{name}/approve", summary="Approve a job awaiting this participant's approval")
    async def approve(name: str, body: Reason | None = None) -> dict[str, Any]:
        return (await jobs.approve(name, ACTOR, (body or Reason()).reason)).to_document()

    @router.post("/{name}/reject", summary="Reject a job awaiting this participant's approval")
    async def reject(name: str, body: Reason | None = None) -> dict[str, Any]:
        return (await jobs.reject(name, ACTOR, (body or Reason()).reason)).to_document()

    def command_route(verb: str, command: JobCommand) -> None:
        async def run(name: str, body: Reason | None = None) -> dict[str, Any]:
            result = await jobs.command(name, command, ACTOR, (body or Reason()).reason)
            return result.to_dict()

        run.__name__ = f"{verb}_job"
        router.post(f"/{{name}}/{verb}", summary=f"{verb.capitalize()} a job (at any party)")(run)

    for verb, command in _COMMANDS.items():
        command_route(verb, command)

    @router.delete("/{name}", summary="Delete a job at every party")
    async def delete(name: str) -> dict[str, Any]:
        return (await jobs.delete(name, ACTOR)).to_dict()

    return router
