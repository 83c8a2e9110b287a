"""The BFIA transport (PTP): push/pop message queues per session and topic, across domains.

Engines in SPU/yacl "blackbox" link mode (and BFIA peers) listen on nothing: they `POST` messages to
their own node's egress port and long-poll for the messages addressed to them (see the engines
reference).  The gateway is the transport:

    POST /v1/interconn/chan/push      (also /invoke, /transport)  queue a message for a node
    POST /v1/interconn/chan/pop?timeout=N                         take the next message (long poll)
    POST /v1/interconn/chan/peek                                  take the next message, never wait
    POST /v1/interconn/chan/release                               drop a topic's or a session's queues

Headers `x-ptp-session-id`, `x-ptp-topic`, `x-ptp-source-node-id`, `x-ptp-target-node-id`; node ids are
domain ids.  Every answer is HTTP 200 with the transport's protobuf envelope `TransportOutbound { bytes
payload = 1; string code = 2; string message = 3; }`, code `E0000000000` = OK (an OK pop with an empty
payload means "nothing yet"); the other codes are Kuscia's (`E0000000700` = the queue is full, retry
later; `E0000000608` = session released; `E0000000403` = not a party ...).

Queues follow Kuscia's transport: a message pushed by node S on topic T is queued under the key `S-T`
of its session; a pop for messages from node P on topic T takes from `P-T`.  A push for another domain
is forwarded by the egress port to that domain's gateway (`transport.<domain>.svc` on its public port,
along the route, transit included) and queued *there*; so a message crosses the network once, pushed,
and each side pops locally.

What Accord adds, because a queue is a way into a running computation:
- **Sessions are bound to running tasks.**  A session id must be registered in the ServiceRegistry (by
  the task runtime, with the task's parties) for any push or pop; unknown sessions get `E0000000404`,
  and a push from a domain that is not a party of the session gets `E0000000403`.  Unregistering the
  session (the task ended) drops its messages and wakes its pollers with `E0000000608`.
- **The source is the TLS identity.**  On the public port the queue key uses the authenticated peer,
  never the `x-ptp-source-node-id` header (which, when present, must agree).
- **Bounded memory.**  Each session holds at most `session_limit` bytes and all sessions together at most
  `total_limit`; a push that does not fit waits up to its `timeout` for pops to make room, then gets
  `E0000000700` (QueueFull), as yacl expects.  A single message is at most `max_message` bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from accord.gateway.http1 import Framing, RequestHead, read_body
from accord.gateway.refusals import (
    BadRequest,
    GatewayError,
    Misdirected,
    NotAllowed,
    PeerUnauthorized,
    UnknownRoute,
)
from accord.gateway.registry import ServiceRegistry, SessionEntry
from accord.gateway.stream import Stream, bounded

log = logging.getLogger(__name__)

OK = "E0000000000"
INVALID_REQUEST = "E0000000400"
FORBIDDEN = "E0000000403"
NOT_FOUND = "E0000000404"
TOO_LARGE = "E0000000413"
SERVER_ERROR = "E0000000500"
UNREACHABLE = "E0000000607"
SESSION_RELEASED = "E0000000608"
QUEUE_FULL = "E0000000700"

SESSION = b"x-ptp-session-id"
TOPIC = b"x-ptp-topic"
SOURCE = b"x-ptp-source-node-id"
TARGET = b"x-ptp-target-node-id"

PREFIX = b"/v1/interconn/chan/"
METHODS = {
    b"push": "push",
    b"invoke": "push",
    b"transport": "push",
    b"pop": "pop",
    b"peek": "peek",
    b"release": "release",
}
DEFAULT_TIMEOUT = 120.0
MAX_TIMEOUT = 300.0


class PtpError(Exception):
    """A transport-level refusal, answered as an envelope with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- the envelope -----------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_outbound(payload: bytes = b"", code: str = OK, message: str = "") -> bytes:
    """`TransportOutbound` in protobuf wire format (fields 1 bytes, 2 string, 3 string)."""
    out = bytearray()
    for tag, value in ((0x0A, payload), (0x12, code.encode()), (0x1A, message.encode())):
        if value:
            out += bytes([tag]) + _varint(len(value)) + value
    return bytes(out)


def decode_outbound(data: bytes) -> tuple[bytes, str, str]:
    """(payload, code, message) from a `TransportOutbound`; unknown fields are skipped."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(data, pos)
            fields[number] = data[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = _read_varint(data, pos)
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields.get(1, b""), fields.get(2, b"").decode(), fields.get(3, b"").decode()


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def envelope_response(
    code: str = OK, message: str = "", payload: bytes = b"", *, close: bool = False
) -> bytes:
    body = encode_outbound(payload, code, message)
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: application/x-protobuf", b"Content-Length: %d" % len(body)]
    if code != OK:
        lines.append(b"X-PTP-Code: " + code.encode())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def ptp_code(error: GatewayError) -> str:
    """The transport code for a gateway refusal met while forwarding a push."""
    if isinstance(error, PeerUnauthorized | NotAllowed | Misdirected):
        return FORBIDDEN
    if isinstance(error, BadRequest):
        return INVALID_REQUEST
    if isinstance(error, UnknownRoute):
        return NOT_FOUND
    return UNREACHABLE


# -- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PtpRequest:
    method: str
    session: str
    topic: str
    source: str
    target: str
    timeout: float


def ptp_method(target: bytes) -> str | None:
    """'push' / 'pop' / 'peek' / 'release' if `target` is a transport path, else None."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(PREFIX):
        return None
    return METHODS.get(path[len(PREFIX) :].rstrip(b"/"))


def parse_ptp(req: RequestHead, method: str) -> PtpRequest:
    def header(name: bytes) -> str:
        return (req.headers.get(name) or b"").decode("ascii", "replace").strip()

    query = parse_qs(req.target.split(b"?", 1)[1].decode("ascii", "replace")) if b"?" in req.target else {}
    timeout = DEFAULT_TIMEOUT
    if "timeout" in query:
        try:
            timeout = min(MAX_TIMEOUT, max(0.0, float(query["timeout"][0])))
        except ValueError as exc:
            raise PtpError(INVALID_REQUEST, f"invalid timeout {query['timeout'][0]!r}") from exc
    parsed = PtpRequest(method, header(SESSION), header(TOPIC), header(SOURCE), header(TARGET), timeout)
    if not parsed.session:
        raise PtpError(INVALID_REQUEST, "x-ptp-session-id is required")
    if method in ("push", "pop", "peek") and not parsed.topic:
        raise PtpError(INVALID_REQUEST, "x-ptp-topic is required")
    if method in ("pop", "peek") and not parsed.target:
        raise PtpError(INVALID_REQUEST, "x-ptp-target-node-id (the node whose messages to take) is required")
    return parsed


# -- queues -----------------------------------------------------------------------------------------


@dataclass
class _Session:
    topics: dict[str, collections.deque[bytes]] = field(default_factory=dict)
    size: int = 0
    released: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def signal(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class PtpHub:
    """Message queues per (session, topic key) with the memory bounds of the module docstring."""

    def __init__(
        self, *, session_limit: int = 64 << 20, total_limit: int = 512 << 20, max_message: int = 16 << 20
    ) -> None:
        self.session_limit = session_limit
        self.total_limit = total_limit
        self.max_message = max_message
        self.total = 0
        self._sessions: dict[str, _Session] = {}

    def _session(self, sid: str) -> _Session:
        session = self._sessions.get(sid)
        if session is None:
            session = self._sessions[sid] = _Session()
        if session.released:
            raise PtpError(SESSION_RELEASED, f"session {sid} was released")
        return session

    async def _wait(
        self, session: _Session, ready: collections.abc.Callable[[], bool], timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            if session.released:
                raise PtpError(SESSION_RELEASED, "session released while waiting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await bounded(session.changed.wait(), remaining)
        return True

    async def push(self, sid: str, key: str, data: bytes, timeout: float) -> None:
        if len(data) > min(self.max_message, self.session_limit):
            raise PtpError(
                TOO_LARGE, f"message of {len(data)} bytes exceeds the {self.max_message}-byte limit"
            )
        session = self._session(sid)

        def fits() -> bool:
            return (
                session.size + len(data) <= self.session_limit and self.total + len(data) <= self.total_limit
            )

        if not await self._wait(session, fits, timeout):
            raise PtpError(QUEUE_FULL, f"session {sid} queue is full ({session.size} bytes); retry later")
        session.topics.setdefault(key, collections.deque()).append(data)
        session.size += len(data)
        self.total += len(data)
        session.signal()

    async def pop(self, sid: str, key: str, timeout: float) -> bytes | None:
        session = self._session(sid)
        if not await self._wait(session, lambda: bool(session.topics.get(key)), timeout):
            return None
        return self._take(session, key)

    def peek(self, sid: str, key: str) -> bytes | None:
        session = self._session(sid)
        return self._take(session, key) if session.topics.get(key) else None

    def _take(self, session: _Session, key: str) -> bytes:
        queue = session.topics[key]
        data = queue.popleft()
        if not queue:
            del session.topics[key]
        session.size -= len(data)
        self.total -= len(data)
        session.signal()
        return data

    def release_topic(self, sid: str, key: str) -> None:
        session = self._sessions.get(sid)
        if session is not None and not session.released:
            freed = sum(len(m) for m in session.topics.pop(key, ()))
            session.size -= freed
            self.total -= freed
            session.signal()

    def release_session(self, sid: str, *, forget: bool = False) -> None:
        """Drop a session's messages; pollers wake with SESSION_RELEASED. `forget` also drops the marker."""
        session = self._sessions.pop(sid, None) if forget else self._sessions.get(sid)
        if session is None:
            if not forget:
                self._sessions[sid] = _Session(released=True)
            return
        self.total -= session.size
        session.topics.clear()
        session.size = 0
        session.released = True
        session.signal()

    def queued(self, sid: str) -> int:
        session = self._sessions.get(sid)
        return session.size if session is not None else 0


# -- the two ends -----------------------------------------------------------------------------------


class PtpTransport:
    """Transport requests from local engines (egress port) and from peers (public port)."""

    def __init__(self, me: str, registry: ServiceRegistry, hub: PtpHub) -> None:
        self.me = me
        self.registry = registry
        self.hub = hub
        registry.subscribe_sessions(self._session_gone)

    def _session_gone(self, entry: SessionEntry) -> None:
        self.hub.release_session(entry.session, forget=True)

    def session_for(self, p: PtpRequest, domain: str) -> SessionEntry:
        """The registered session of `p`, if `domain` is one of its parties."""
        entry = self.registry.session(p.session)
        if entry is None:
            raise PtpError(NOT_FOUND, f"no running task has PTP session {p.session!r} at {self.me}")
        if domain not in entry.parties:
            raise PtpError(FORBIDDEN, f"domain {domain} is not a party of PTP session {p.session!r}")
        return entry

    def check_outbound_push(self, p: PtpRequest) -> None:
        """A local engine's push for another domain: our session, our identity, a party as target."""
        if p.source and p.source != self.me:
            raise PtpError(FORBIDDEN, f"x-ptp-source-node-id {p.source!r} is not this node ({self.me})")
        self.session_for(p, p.target)

    async def handle_engine(self, stream: Stream, req: RequestHead, p: PtpRequest) -> bool:
        """pop / peek / release, and pushes addressed to this node itself."""
        if p.source and p.source != self.me:
            raise PtpError(FORBIDDEN, f"x-ptp-source-node-id {p.source!r} is not this node ({self.me})")
        if p.method == "push":
            self.session_for(p, self.me)
            body = await self._body(stream, req)
            await self.hub.push(p.session, f"{self.me}-{p.topic}", body, p.timeout)
            return await self._answer(stream, req)
        if p.method == "release":
            self.session_for(p, self.me)
            if p.topic:
                self.hub.release_topic(p.session, f"{p.target}-{p.topic}")
            else:
                self.hub.release_session(p.session)
            return await self._answer(stream, req)
        self.session_for(p, p.target)
        key = f"{p.target}-{p.topic}"
        payload = (
            self.hub.peek(p.session, key)
            if p.method == "peek"
            else await self.hub.pop(p.session, key, p.timeout)
        )
        return await self._answer(stream, req, payload or b"")

    async def handle_peer(self, stream: Stream, req: RequestHead, source: str) -> bool:
        """A push from peer `source` (TLS identity) on the public port."""
        method = ptp_method(req.target)
        if method != "push":
            raise PtpError(FORBIDDEN, "peers may only push; pop, peek and release are local to each node")
        p = parse_ptp(req, method)
        if p.source and p.source != source:
            raise PtpError(
                FORBIDDEN, f"x-ptp-source-node-id {p.source!r} but the connection is from {source}"
            )
        if p.target and p.target != self.me:
            raise PtpError(
                FORBIDDEN, f"push for {p.target!r} reached {self.me}; this node does not relay pushes"
            )
        self.session_for(p, source)
        body = await self._body(stream, req)
        await self.hub.push(p.session, f"{source}-{p.topic}", body, p.timeout)
        return await self._answer(stream, req)

    async def _body(self, stream: Stream, req: RequestHead) -> bytes:
        if req.framing is Framing.LENGTH and req.length > self.hub.max_message:
            raise PtpError(
                TOO_LARGE, f"message of {req.length} bytes exceeds the {self.hub.max_message}-byte limit"
            )
        try:
            body = await read_body(stream, req, self.hub.max_message)
        except BadRequest as exc:
            raise PtpError(TOO_LARGE if "limit" in exc.message else INVALID_REQUEST, exc.message) from exc
        if not body:
            raise PtpError(INVALID_REQUEST, "empty message")
        return body

    @staticmethod
    async def _answer(stream: Stream, req: RequestHead, payload: bytes = b"") -> bool:
        stream.write(envelope_response(OK, payload=payload, close=not req.keep_alive))
        await stream.drain()
        return req.keep_alive
