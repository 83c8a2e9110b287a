"""PeerClient: send one protocol message to a peer's node, through this node's gateway egress port.

How a message travels: `POST http://127.0.0.1:<egress>/interop/v1/...` with `Host: accord.<peer>.svc`.
The local gateway picks the route to `<peer>`, forwards over its pooled mTLS link, and the peer's
gateway delivers it to the peer's control service `accord` (the node's interop API, `server.py`),
adding the authenticated source domain.  This node never talks to a peer any other way, so every
control message is subject to the same pins, routes and transit rules as engine traffic.

What a caller gets back is the typed reply, or a typed error it can act on:

- the peer's own refusal (`{code, message}` from its interop API) is rebuilt with `from_wire`, so a
  `NotFound`, `PermissionDenied` or a `Conflict` with code 11210 arrives as that class and code;
- a refusal by a gateway on the way (header `X-Accord-Error`: no route, peer unreachable, the peer runs
  no control service ...) is `Unavailable` (retryable) naming the peer and the gateway's reason, except
  `not-allowed`, which is `PermissionDenied`;
- a timeout or a transport failure is `Unavailable` too.

No retry happens here: the caller is a reconciler that re-derives what to send from the store and
retries with backoff (`SendBook`), so a restarted node resumes exactly where the store says it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from accord.errors import AccordError, ErrorCode, PermissionDenied, Unavailable, from_wire
from accord.interop.messages import (
    Ack,
    JobCommandReply,
    JobCommandRequest,
    JobDelete,
    JobProposal,
    JobSync,
    JobSyncReply,
    Message,
    PartyJobReport,
    PartyReply,
    PartyTaskReport,
    ProposalReply,
    TaskPrepare,
    TaskRelease,
    TaskStart,
)

log = logging.getLogger(__name__)
# httpx logs every request at INFO; control messages are many and their failures are logged by the callers.
logging.getLogger("httpx").setLevel(logging.WARNING)

CONTROL_SERVICE = "accord"
"""The gateway service name under which every node serves its interop API."""
SOURCE_HEADER = "X-Accord-Source-Domain"
"""Set by the receiving gateway from the TLS identity (see `accord.gateway.local`); the only sender id."""
GATEWAY_ERROR_HEADER = "X-Accord-Error"
GATEWAY_MESSAGE_HEADER = "X-Accord-Error-Message"
PREFIX = "/interop/v1"

M = TypeVar("M", bound=Message)


class PeerClient:
    """See the module docstring.  One per node; safe to share between controllers and services."""

    def __init__(
        self,
        domain: str,
        egress_port: int | Callable[[], int],
        *,
        timeout: float = 15.0,
        node_secret: str = "",
    ) -> None:
        """`node_secret`: the gateway's `node_secret`, which proves to the egress port that a message to
        `accord.<peer>.svc` comes from this node, not from an engine."""
        self.domain = domain
        self.node_secret = node_secret
        self._egress_port = egress_port
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._port = 0

    @property
    def egress_port(self) -> int:
        return self._egress_port() if callable(self._egress_port) else self._egress_port

    def _client(self) -> httpx.AsyncClient:
        port = self.egress_port
        if self._http is None or port != self._port:
            # The gateway binds its egress port when it starts (0 = any free port), so the client is made
            # on first use and remade if the gateway came back on another port.
            self._port = port
            self._http = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def call(self, peer: str, path: str, message: Message, reply: type[M]) -> M:
        """POST `message` to `<PREFIX><path>` at `peer`'s node; the typed reply or a typed error."""
        try:
            response = await self._client().post(
                PREFIX + path,
                content=message.model_dump_json(),
                headers={
                    "Host": f"{CONTROL_SERVICE}.{peer}.svc",
                    "Content-Type": "application/json",
                    "X-Accord-Node-Secret": self.node_secret,
                },
            )
        except httpx.TimeoutException as exc:
            raise Unavailable(
                f"{peer} did not answer within {self.timeout:g} s", code=ErrorCode.PEER_UNREACHABLE
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach {peer}: the local gateway's egress port {self._port} failed ({exc!r})",
                code=ErrorCode.PEER_UNREACHABLE,
            ) from exc
        refusal = response.headers.get(GATEWAY_ERROR_HEADER)
        if refusal:
            text = response.headers.get(GATEWAY_MESSAGE_HEADER, "") or f"HTTP {response.status_code}"
            if refusal == "not-allowed":
                raise PermissionDenied(f"{peer} refused the connection: {text}")
            code = ErrorCode.ROUTE_NOT_FOUND if refusal == "unknown-route" else ErrorCode.ROUTE_UNREACHABLE
            raise Unavailable(f"{peer} is unreachable ({refusal}): {text}", code=code)
        if response.status_code >= 400:
            raise _peer_error(peer, response)
        try:
            return reply.model_validate_json(response.content)
        except ValueError as exc:
            raise AccordError(
                f"{peer} answered {path} with something that is not a {reply.__name__}"
            ) from exc

    # -- one method per message -----------------------------------------------------------------------

    async def propose(self, peer: str, msg: JobProposal) -> ProposalReply:
        return await self.call(peer, "/jobs/propose", msg, ProposalReply)

    async def sync_job(self, peer: str, msg: JobSync) -> JobSyncReply:
        return await self.call(peer, "/jobs/sync", msg, JobSyncReply)

    async def report_job(self, peer: str, msg: PartyJobReport) -> Ack:
        return await self.call(peer, "/jobs/report", msg, Ack)

    async def command(self, peer: str, msg: JobCommandRequest) -> JobCommandReply:
        return await self.call(peer, "/jobs/command", msg, JobCommandReply)

    async def delete_job(self, peer: str, msg: JobDelete) -> Ack:
        return await self.call(peer, "/jobs/delete", msg, Ack)

    async def prepare(self, peer: str, msg: TaskPrepare) -> PartyReply:
        return await self.call(peer, "/tasks/prepare", msg, PartyReply)

    async def start(self, peer: str, msg: TaskStart) -> PartyReply:
        return await self.call(peer, "/tasks/start", msg, PartyReply)

    async def release(self, peer: str, msg: TaskRelease) -> PartyReply:
        return await self.call(peer, "/tasks/release", msg, PartyReply)

    async def report_task(self, peer: str, msg: PartyTaskReport) -> Ack:
        return await self.call(peer, "/tasks/report", msg, Ack)


def _peer_error(peer: str, response: httpx.Response) -> AccordError:
    try:
        body = response.json()
        return from_wire(int(body["code"]), f"{peer}: {body['message']}", response.status_code)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:300] or response.reason_phrase
        return from_wire(int(ErrorCode.UNKNOWN), f"{peer}: HTTP {response.status_code}: {text}", None)


@dataclass
class _Attempts:
    failures: int
    next_at: float
    last_error: str


class SendBook:
    """In-memory backoff per (object, peer): when a failed message may be sent again, and why it failed.

    Kept in memory on purpose: what must be sent is derived from the store, only the pacing is not, so a
    restarted node simply starts again with short delays.  `initial * factor**(n-1)`, capped at `maximum`.
    """

    def __init__(self, *, initial: float = 0.2, factor: float = 2.0, maximum: float = 5.0) -> None:
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self._entries: dict[Hashable, _Attempts] = {}

    def due(self, key: Hashable, now: float | None = None) -> bool:
        entry = self._entries.get(key)
        return entry is None or (now if now is not None else time.monotonic()) >= entry.next_at

    def failed(self, key: Hashable, error: str) -> float:
        """Record a failure; returns the delay before the next attempt."""
        entry = self._entries.get(key)
        failures = entry.failures + 1 if entry else 1
        delay = min(self.maximum, self.initial * self.factor ** (failures - 1))
        self._entries[key] = _Attempts(failures, time.monotonic() + delay, error)
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def last_error(self, key: Hashable) -> str:
        entry = self._entries.get(key)
        return entry.last_error if entry else ""

    def wait(self, keys: list[Hashable]) -> float | None:
        """Seconds until the first of `keys` that is backing off may be tried again (None if none is)."""
        now = time.monotonic()
        waits = [max(0.0, e.next_at - now) for k in keys if (e := self._entries.get(k)) is not None]
        return min(waits) if waits else None

    def forget(self, match: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._entries if match(k)]:
            del self._entries[key]
