"""`GET /v1/watch/{kind}`: the store's change stream as newline-delimited JSON over one long response.

Each line is one JSON object: a change `{"type": ADDED|MODIFIED|DELETED, "revision", "kind", "name",
"object"}`, a `{"type": "HEARTBEAT"}` every `heartbeat_seconds` of silence (so proxies and clients can
tell a quiet stream from a dead one; Kuscia issue #887 is about proxies cutting long watches), or a
final `{"type": "ERROR", "code", "message", "http_status"}` when the stream cannot go on; for example,
`since` is older than the store's retained history (`Gone`, 11113: list again, then watch from the
list's revision).

Kind and selector are checked before the response starts, so a typo is a normal 400, not a stream.
When the node stops, every watch ends with an ERROR line saying so (code 11112, see `api/streams.py`);
when the client goes away Starlette cancels the body and `relay` closes the store iterator, so no
watcher outlives its connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from accord.api.errors import ERROR_RESPONSES, INTERNAL_ERROR_MESSAGE
from accord.api.streams import Signal, StreamCloser, relay
from accord.errors import AccordError, ErrorCode, Unavailable
from accord.services import Services
from accord.store.base import WatchEvent

log = logging.getLogger("accord.api.watch")

NDJSON = "application/x-ndjson"
HEARTBEAT_LINE = b'{"type":"HEARTBEAT"}\n'


SHUTTING_DOWN = Unavailable("the node is shutting down: watch again once it is back")


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode() + b"\n"


def _error_line(exc: AccordError) -> bytes:
    return _line({"type": "ERROR", **exc.to_dict(), "http_status": exc.http_status})


async def watch_lines(
    events: AsyncIterator[WatchEvent], closer: StreamCloser, heartbeat_seconds: float
) -> AsyncIterator[bytes]:
    """Serialise `events` as NDJSON lines, with heartbeats in the gaps and a final ERROR line."""
    try:
        async for item in relay(events, closer, idle_seconds=heartbeat_seconds):
            if item is Signal.IDLE:
                yield HEARTBEAT_LINE
            elif item is Signal.CLOSING:
                yield _error_line(SHUTTING_DOWN)
                return
            else:
                yield _line(item.model_dump(mode="json"))
    except AccordError as exc:
        yield _error_line(exc)
    except Exception:
        log.exception("watch stream failed")
        yield _line(
            {
                "type": "ERROR",
                "code": int(ErrorCode.UNKNOWN),
                "message": INTERNAL_ERROR_MESSAGE,
                "http_status": 500,
            }
        )


def build_router(services: Services, closer: StreamCloser, *, heartbeat_seconds: float) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["watch"], responses=ERROR_RESPONSES)

    @router.get(
        "/watch/{kind}",
        summary="Stream changes as NDJSON (ADDED/MODIFIED/DELETED, HEARTBEAT, ERROR)",
        response_class=StreamingResponse,
        responses={200: {"content": {NDJSON: {}}, "description": "one JSON object per line"}},
    )
    async def watch(
        kind: str,
        since: int = Query(0, ge=0, description="stream changes after this store revision"),
        selector: str | None = Query(None, description="label selector: a=b,c!=d,e,!f"),
    ) -> StreamingResponse:
        events = services.resources.watch(kind, since, selector)
        return StreamingResponse(watch_lines(events, closer, heartbeat_seconds), media_type=NDJSON)

    return router
