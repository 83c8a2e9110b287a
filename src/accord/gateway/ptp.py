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
- **A client that gives up loses and doubles nothing.**  A pop holds its message only while the answer is
  written: if it cannot be (the connection is gone, a write fails, or it is not written within
  `ANSWER_TIMEOUT`) the message goes back to the head of its queue, and while a message is out no other
  pop of its topic is served, so the order holds.  A push or pop that waits watches its connection: if
  the client leaves, the push is dropped (the client sends it again) and the pop takes nothing.  The
  egress reads a forwarded push's body ahead and closes the forward when the engine leaves, so the peer
  that holds the push sees its client gone too.  Waits end a little before the client's `timeout`
  (`answer_within`), so the answer is on its way before the client gives up.
- **Counters per session** (pushes, pops, empty pops, bytes, QueueFull answers, drops, put-backs) are
  logged in one line when the session is released.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs

from accord.gateway.http1 import Framing, Headers, RequestHead, read_body
from accord.gateway.refusals import (
    BadRequest,
    GatewayError,
    Misdirected,
    NotAllowed,
    PeerUnauthorized,
    UnknownRoute,
)
from accord.gateway.registry import ServiceRegistry, SessionEntry
from accord.gateway.stream import READ_SIZE, Stream, bounded

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
ANSWER_MARGIN = 1.0  # a long poll is answered up to this much (at most a fifth of it) before its timeout
ANSWER_TIMEOUT = 30.0  # a message answer not written by then is put back (the connection is dropped)
WATCH_LIMIT = 64 * 1024  # read-ahead a watched connection may fill with pipelined bytes

T = TypeVar("T")


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


async def send_ptp_refusal(stream: Stream, req: RequestHead, error: PtpError) -> bool:
    """Answer `req` with `error` as an envelope; whether the connection may carry another request."""
    close = req.has_body or not req.keep_alive
    stream.write(envelope_response(error.code, error.message, close=close))
    await stream.drain()
    return not close


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


class ClientGone(Exception):
    """The client of a waiting push or pop closed its connection: the request is dropped unanswered."""


Gone: TypeAlias = Callable[[], "asyncio.Future[None]"]
"""Starts (once) watching a request's connection; the future is done when its client has left."""


@dataclass(slots=True)
class _Queue:
    messages: collections.deque[bytes] = field(default_factory=collections.deque)
    busy: bool = False  # its head message was taken and is being written to a popper


@dataclass(slots=True)
class _Stats:
    pushes: int = 0
    pushed: int = 0
    pops: int = 0
    popped: int = 0
    empty: int = 0
    full: int = 0
    dropped: int = 0
    requeued: int = 0

    def summary(self, unread: int) -> str:
        parts = [
            f"{self.pushes} pushes ({_mb(self.pushed)})",
            f"{self.pops} pops ({_mb(self.popped)})",
            f"{self.empty} empty pops",
        ]
        for count, what in (
            (self.full, "QueueFull answers"),
            (self.dropped, "pushes dropped (client left while waiting)"),
            (self.requeued, "pops put back (answer not written)"),
        ):
            if count:
                parts.append(f"{count} {what}")
        if unread:
            parts.append(f"{_mb(unread)} left unread")
        return ", ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass
class _Session:
    topics: dict[str, _Queue] = field(default_factory=dict)
    size: int = 0
    released: bool = False
    stats: _Stats = field(default_factory=_Stats)
    _changed: asyncio.Future[None] | None = None

    def changed(self) -> asyncio.Future[None]:
        """Done at the next `signal` (created on demand: nothing to wake when nobody waits)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def signal(self) -> None:
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None


@dataclass(slots=True)
class Taken:
    """A message taken from its queue but not yet delivered: `PtpHub.settle` commits or puts it back.

    While a message is out, its queue serves no other pop, so a message put back is again the next one
    and the order of a topic never changes.
    """

    session: _Session
    key: str
    queue: _Queue
    data: bytes
    settled: bool = False


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
        self,
        session: _Session,
        ready: Callable[[], bool],
        timeout: float,
        gone: Gone | None,
    ) -> bool:
        """Wait until `ready()`; False after `timeout`.  `gone` is started only if there is a wait."""
        deadline: float | None = None
        watch: asyncio.Future[None] | None = None
        while True:
            if session.released:
                raise PtpError(SESSION_RELEASED, "session released while waiting")
            if watch is not None and watch.done():
                raise ClientGone
            if ready():
                return True
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if deadline <= now:
                return False
            if gone is not None and watch is None:
                watch = gone()
            waiters: set[asyncio.Future[None]] = {session.changed()}
            if watch is not None:
                waiters.add(watch)
            await asyncio.wait(waiters, timeout=deadline - now, return_when=asyncio.FIRST_COMPLETED)

    async def push(self, sid: str, key: str, data: bytes, timeout: float, gone: Gone | None = None) -> None:
        """Queue `data`; waits up to `timeout` for room (QueueFull after), `ClientGone` if `gone` fires."""
        if len(data) > min(self.max_message, self.session_limit):
            raise PtpError(
                TOO_LARGE, f"message of {len(data)} bytes exceeds the {self.max_message}-byte limit"
            )
        session = self._session(sid)

        def fits() -> bool:
            return (
                session.size + len(data) <= self.session_limit and self.total + len(data) <= self.total_limit
            )

        try:
            room = await self._wait(session, fits, timeout, gone)
        except ClientGone:
            session.stats.dropped += 1
            raise
        if not room:
            session.stats.full += 1
            raise PtpError(QUEUE_FULL, f"session {sid} queue is full ({session.size} bytes); retry later")
        queue = session.topics.get(key)
        if queue is None:
            queue = session.topics[key] = _Queue()
        queue.messages.append(data)
        session.size += len(data)
        self.total += len(data)
        session.stats.pushes += 1
        session.stats.pushed += len(data)
        session.signal()

    async def take(self, sid: str, key: str, timeout: float, gone: Gone | None = None) -> Taken | None:
        """The next message of `key` (waiting up to `timeout`), to be settled; None if there is none."""
        session = self._session(sid)

        def ready() -> bool:
            queue = session.topics.get(key)
            return queue is not None and not queue.busy and bool(queue.messages)

        if not await self._wait(session, ready, timeout, gone):
            session.stats.empty += 1
            return None
        return self._take(session, key)

    def try_take(self, sid: str, key: str) -> Taken | None:
        """`take` without waiting (peek)."""
        session = self._session(sid)
        queue = session.topics.get(key)
        if queue is None or queue.busy or not queue.messages:
            session.stats.empty += 1
            return None
        return self._take(session, key)

    def _take(self, session: _Session, key: str) -> Taken:
        queue = session.topics[key]
        data = queue.messages.popleft()
        queue.busy = True
        session.size -= len(data)
        self.total -= len(data)
        session.signal()  # room for waiting pushes
        return Taken(session, key, queue, data)

    def settle(self, taken: Taken, *, delivered: bool) -> None:
        """Commit a delivered message, or put it back at the head of its queue (unless released since)."""
        if taken.settled:
            return
        taken.settled = True
        session, queue, n = taken.session, taken.queue, len(taken.data)
        queue.busy = False
        current = session.topics.get(taken.key) is queue and not session.released
        if delivered:
            session.stats.pops += 1
            session.stats.popped += n
        elif current:
            queue.messages.appendleft(taken.data)
            session.size += n
            self.total += n
            session.stats.requeued += 1
        if current and not queue.messages:
            del session.topics[taken.key]
        session.signal()

    async def pop(self, sid: str, key: str, timeout: float) -> bytes | None:
        """`take` and count it delivered at once (no connection to lose it on)."""
        taken = await self.take(sid, key, timeout)
        if taken is None:
            return None
        self.settle(taken, delivered=True)
        return taken.data

    def peek(self, sid: str, key: str) -> bytes | None:
        taken = self.try_take(sid, key)
        if taken is None:
            return None
        self.settle(taken, delivered=True)
        return taken.data

    def release_topic(self, sid: str, key: str) -> None:
        session = self._sessions.get(sid)
        if session is not None and not session.released:
            queue = session.topics.pop(key, None)
            freed = sum(len(m) for m in queue.messages) if queue is not None else 0
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
        if not session.released:
            log.info("PTP session %s released: %s", sid, session.stats.summary(session.size))
        self.total -= session.size
        session.topics.clear()
        session.size = 0
        session.released = True
        session.signal()

    def queued(self, sid: str) -> int:
        session = self._sessions.get(sid)
        return session.size if session is not None else 0

    def stats(self, sid: str) -> _Stats | None:
        """The counters of a session (None if it never saw a request)."""
        session = self._sessions.get(sid)
        return session.stats if session is not None else None


# -- the two ends -----------------------------------------------------------------------------------


def answer_within(timeout: float) -> float:
    """How long the gateway may hold a request whose client waits `timeout`: a little less, so the
    answer (an empty pop, a QueueFull) is on its way before the client gives up on it."""
    return max(0.0, timeout - min(ANSWER_MARGIN, timeout * 0.2))


async def client_gone(stream: Stream) -> None:
    """Return when the client of `stream` closes its connection (EOF or error).

    Reads into the stream's read-ahead, so bytes a client pipelines are kept for the next request; after
    reading `WATCH_LIMIT` of them it stops reading (and noticing).  Cancel-safe: a cancelled read loses
    nothing.
    """
    read = 0  # counted apart from the read-ahead, which may hold a push body being forwarded from it
    try:
        while read < WATCH_LIMIT:
            data = await stream.reader.read(READ_SIZE)
            if not data:
                return
            stream.buf += data
            read += len(data)
    except Exception:  # a reset, a TLS error: the client is gone all the same
        return
    await asyncio.get_running_loop().create_future()  # until cancelled


class _Watch:
    """A `client_gone` task started on first use (most requests never wait) and stopped by `stop`."""

    __slots__ = ("stream", "task")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Future[None]:
        if self.task is None:
            self.task = asyncio.create_task(client_gone(self.stream))
        return self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})  # its read is off the stream before anyone reads again


async def unless_client_leaves(stream: Stream, work: Coroutine[Any, Any, T]) -> T | ClientGone:
    """Run `work` (forwarding a push), cancelling it if the client of `stream` disconnects meanwhile.

    `work` must not read from `stream` (the watch does): the push body is in the read-ahead already.
    Returns `work`'s result, or a `ClientGone` when it was cancelled for that reason.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(client_gone(stream))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            if task.cancelled():
                return ClientGone()
        return task.result()
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})


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

    async def buffer_push(self, stream: Stream, req: RequestHead) -> RequestHead:
        """Read a push's body ahead (into `stream`'s read-ahead), before it is forwarded to a peer.

        Then nothing reads the engine's connection while the peer holds the push, so it can be watched
        (`unless_client_leaves`).  Returns the head to forward: a chunked body is re-framed with a length.
        """
        body = await self._body(stream, req)
        stream.buf[0:0] = body
        if req.framing is Framing.LENGTH:
            return req
        fields = [(n, v) for n, v in req.headers.items if n.lower() not in (b"transfer-encoding", b"trailer")]
        fields.append((b"Content-Length", b"%d" % len(body)))
        return dataclasses.replace(req, headers=Headers(fields), framing=Framing.LENGTH, length=len(body))

    async def handle_engine(self, stream: Stream, req: RequestHead, p: PtpRequest) -> bool:
        """pop / peek / release, and pushes addressed to this node itself."""
        if p.source and p.source != self.me:
            raise PtpError(FORBIDDEN, f"x-ptp-source-node-id {p.source!r} is not this node ({self.me})")
        if p.method == "push":
            self.session_for(p, self.me)
            body = await self._body(stream, req)
            return await self._push(stream, req, p, f"{self.me}-{p.topic}", body)
        if req.has_body:  # meaningless for these methods, but it must not be taken for the next request
            await self._body(stream, req, allow_empty=True)
        if p.method == "release":
            self.session_for(p, self.me)
            if p.topic:
                self.hub.release_topic(p.session, f"{p.target}-{p.topic}")
            else:
                self.hub.release_session(p.session)
            return await self._answer(stream, req)
        self.session_for(p, p.target)
        key = f"{p.target}-{p.topic}"
        if p.method == "peek":
            return await self._deliver(stream, req, self.hub.try_take(p.session, key))
        watch = _Watch(stream)
        try:
            taken = await self.hub.take(p.session, key, answer_within(p.timeout), watch.start)
        except ClientGone:
            log.debug("PTP pop for %s in session %s abandoned: the engine left", key, p.session)
            return False
        finally:
            await watch.stop()
        return await self._deliver(stream, req, taken)

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
        return await self._push(stream, req, p, f"{source}-{p.topic}", body)

    async def _push(self, stream: Stream, req: RequestHead, p: PtpRequest, key: str, body: bytes) -> bool:
        """Queue a push, unless its client leaves first (it will retry: queueing it would duplicate it)."""
        watch = _Watch(stream)
        try:
            if stream.closed:
                raise ClientGone
            await self.hub.push(p.session, key, body, answer_within(p.timeout), watch.start)
        except ClientGone:
            log.info(
                "PTP push of %d bytes for %s in session %s dropped: its client left while it waited for room",
                len(body),
                key,
                p.session,
            )
            return False
        finally:
            await watch.stop()
        return await self._answer(stream, req)

    async def _deliver(self, stream: Stream, req: RequestHead, taken: Taken | None) -> bool:
        """Answer a pop or peek; a message whose answer cannot be written goes back to its queue."""
        if taken is None:
            return await self._answer(stream, req)
        if stream.closed:
            self.hub.settle(taken, delivered=False)
            return False
        try:
            stream.write(envelope_response(OK, payload=taken.data, close=not req.keep_alive))
            await bounded(stream.drain(), ANSWER_TIMEOUT)
        except BaseException as exc:
            stream.abort()  # what is still buffered must never reach the client: the message is back
            self.hub.settle(taken, delivered=False)
            if isinstance(exc, OSError | TimeoutError):
                log.info(
                    "PTP pop answer of %d bytes not written (%r); message put back", len(taken.data), exc
                )
                return False
            raise
        self.hub.settle(taken, delivered=True)
        return req.keep_alive

    async def _body(self, stream: Stream, req: RequestHead, *, allow_empty: bool = False) -> bytes:
        if req.framing is Framing.LENGTH and req.length > self.hub.max_message:
            raise PtpError(
                TOO_LARGE, f"message of {req.length} bytes exceeds the {self.hub.max_message}-byte limit"
            )
        try:
            body = await read_body(stream, req, self.hub.max_message)
        except BadRequest as exc:
            raise PtpError(TOO_LARGE if "limit" in exc.message else INVALID_REQUEST, exc.message) from exc
        if not body and not allow_empty:
            raise PtpError(INVALID_REQUEST, "empty message")
        return body

    @staticmethod
    async def _answer(stream: Stream, req: RequestHead, payload: bytes = b"") -> bool:
        stream.write(envelope_response(OK, payload=payload, close=not req.keep_alive))
        await stream.drain()
        return req.keep_alive
