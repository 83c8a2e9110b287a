"""Task routes: reading a task's engine log, and the engine's own progress report.

- `GET /v1/tasks/{name}/logs?follow=` streams the log as plain text (node token).  With `follow` the
  response stays open until the task reaches a terminal phase, like `kubectl logs -f`.
- `POST /v1/tasks/{name}/report` is called by the *engine*, authenticated by the one-time task token
  in header `Token`, never by the node token: an engine must be able to report on its own task and
  nothing else.  The token check and the status write belong to the task controller
  (`accord.controllers.task.record_progress`), which knows the tokens it handed out (as hashes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Security
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from accord.api.auth import task_token_header
from accord.api.errors import ERROR_RESPONSES
from accord.api.streams import Signal, StreamCloser, relay
from accord.controllers.task import record_progress
from accord.errors import Unauthenticated
from accord.services import Services


class TaskReport(BaseModel):
    """What an engine reports about its own task."""

    model_config = ConfigDict(extra="forbid")

    progress: float = Field(ge=0.0, le=1.0, description="fraction done, 0..1")
    message: str = Field("", max_length=4096, description="a short human-readable status line")


async def _log_text(chunks: AsyncIterator[str], closer: StreamCloser) -> AsyncIterator[str]:
    """The log chunks; a follow ends quietly when the node shuts down (a text stream has no error line)."""
    async for item in relay(chunks, closer):
        if item is Signal.CLOSING:
            return
        if isinstance(item, str):
            yield item


def build_logs_router(services: Services, closer: StreamCloser) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)

    @router.get(
        "/tasks/{name}/logs",
        summary="A task's engine log (follow: until the task ends)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def task_logs(
        name: str, follow: bool = Query(False, description="keep streaming until the task ends")
    ) -> StreamingResponse:
        chunks = await services.logs.stream(name, follow=follow)
        return StreamingResponse(_log_text(chunks, closer), media_type="text/plain; charset=utf-8")

    return router


def build_report_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["tasks"], responses=ERROR_RESPONSES)

    @router.post("/tasks/{name}/report", summary="An engine reports progress (task token)")
    async def report(
        name: str, body: TaskReport, token: str | None = Security(task_token_header)
    ) -> dict[str, Any]:
        if not token:
            raise Unauthenticated("missing task token: send the token the runtime gave the engine in 'Token'")
        task = await record_progress(services.store, name, token, body.progress, body.message)
        return {"task": name, "progress": task.status.progress, "message": task.status.message}

    return router
