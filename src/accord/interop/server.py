"""The node's interop API: the control service `accord` that peers reach through the gateway.

The node serves this small FastAPI app on a loopback port and registers the port in its gateway as the
permanent service `accord`, open to every pinned peer (`ServiceRegistry.register("accord", port,
allowed={ANY_PEER})`).  Peers therefore reach it as `accord.<domain>.svc` over the one public port, and
nothing else can reach it from outside the machine.

**Who is asking.**  The receiving gateway sets `X-Accord-Source-Domain` from the peer's TLS identity
after removing any copy the request carried, so that header is the sender and nothing in the body is
trusted to say otherwise.  A request without it did not come through the gateway and is refused (401);
one from this node's own domain (an engine calling `accord.<me>.svc` through the egress port) is refused
too (403): no legitimate message is addressed by a node to itself.  Whether the sender may speak about a
given job (it must be its initiator, or one of its parties) is checked by the handler, which knows the
job.  (The loopback port itself is reachable by local processes; engines in the sandbox have no access
to it, and the route policy of the gateway is what peers meet.)

Known gap: the gateway authenticates *domains*, not processes.  An engine running at bob can send
`Host: accord.alice.svc` through bob's egress port and alice sees a message from bob.  Closing it needs
the egress port to reserve `accord.<peer>.svc` for the node itself (a per-process secret header that
`PeerClient` sends and the gateway checks and strips); until then a participant's engine can do what
that participant's node may do in the protocol, nothing more.

**Errors** are `{code, message}` with the HTTP status of the AccordError class, as on the local API, so
`PeerClient` rebuilds them as the same typed errors on the sending side.  A malformed or unsupported
message (e.g. protocol version 2) is a 400 naming the field.

The handlers are supplied by the node (`InteropHandler`): the job-level ones live in `interop/jobs.py`,
the task-level ones need the runtime and the gateway registry and live with the controllers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import accord
from accord.errors import AccordError, ErrorCode, PermissionDenied, Unauthenticated
from accord.interop.client import PREFIX, SOURCE_HEADER
from accord.interop.messages import (
    Ack,
    JobCommandReply,
    JobCommandRequest,
    JobDelete,
    JobProposal,
    JobSync,
    JobSyncReply,
    PartyJobReport,
    PartyReply,
    PartyTaskReport,
    ProposalReply,
    TaskPrepare,
    TaskRelease,
    TaskStart,
)

log = logging.getLogger(__name__)

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class InteropHandler(Protocol):
    """What a node does with each message; `sender` is the gateway-authenticated source domain."""

    async def propose(self, sender: str, msg: JobProposal) -> ProposalReply: ...

    async def sync_job(self, sender: str, msg: JobSync) -> JobSyncReply: ...

    async def report_job(self, sender: str, msg: PartyJobReport) -> Ack: ...

    async def command(self, sender: str, msg: JobCommandRequest) -> JobCommandReply: ...

    async def delete_job(self, sender: str, msg: JobDelete) -> Ack: ...

    async def prepare(self, sender: str, msg: TaskPrepare) -> PartyReply: ...

    async def start(self, sender: str, msg: TaskStart) -> PartyReply: ...

    async def release(self, sender: str, msg: TaskRelease) -> PartyReply: ...

    async def report_task(self, sender: str, msg: PartyTaskReport) -> Ack: ...


def sender_of(request: Request, me: str) -> str:
    """The authenticated source domain of a request delivered by the gateway."""
    source = request.headers.get(SOURCE_HEADER, "").strip()
    if not source:
        raise Unauthenticated(
            "interop requests must come through the gateway, which names the sender; this one did not"
        )
    if source == me:
        raise PermissionDenied(f"{me} does not accept interop messages from itself")
    return source


def build_interop_app(handler: InteropHandler, domain: str) -> FastAPI:
    """The interop API of node `domain`, delegating every message to `handler`."""
    app = FastAPI(
        title=f"Accord interop API ({domain})",
        version=accord.__version__,
        docs_url=None,
        redoc_url=None,
        description="Node-to-node protocol; reachable only through the gateway as accord.<domain>.svc.",
    )

    @app.exception_handler(AccordError)
    async def _accord_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AccordError)
        if exc.http_status >= 500:
            log.warning("interop %s failed: %r", request.url.path, exc)
        return JSONResponse(status_code=exc.http_status, content=exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            ".".join(str(p) for p in e.get("loc", ())[1:])
            + ": "
            + str(e.get("msg", "")).removeprefix("Value error, ")
            for e in exc.errors()
        )
        return JSONResponse(
            status_code=400,
            content={"code": int(ErrorCode.INVALID_ARGUMENT), "message": f"malformed message: {problems}"},
        )

    def route(path: str, body: type[In], call: Callable[[str, In], Awaitable[Out]]) -> None:
        async def endpoint(request: Request, msg: In) -> Out:
            return await call(sender_of(request, domain), msg)

        # FastAPI reads the body model from the annotation; give it the concrete class (the module uses
        # postponed annotations, which FastAPI could not resolve for a closure's type variable).
        endpoint.__annotations__ = {"request": Request, "msg": body, "return": None}
        endpoint.__name__ = path.strip("/").replace("/", "_")
        app.post(PREFIX + path)(endpoint)

    route("/jobs/propose", JobProposal, handler.propose)
    route("/jobs/sync", JobSync, handler.sync_job)
    route("/jobs/report", PartyJobReport, handler.report_job)
    route("/jobs/command", JobCommandRequest, handler.command)
    route("/jobs/delete", JobDelete, handler.delete_job)
    route("/tasks/prepare", TaskPrepare, handler.prepare)
    route("/tasks/start", TaskStart, handler.start)
    route("/tasks/release", TaskRelease, handler.release)
    route("/tasks/report", PartyTaskReport, handler.report_task)

    @app.get(PREFIX + "/ping")
    async def ping(request: Request) -> dict[str, str]:
        return {"domain": domain, "you": sender_of(request, domain), "version": accord.__version__}

    return app
