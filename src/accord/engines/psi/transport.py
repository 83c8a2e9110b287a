"""The link between the two PSI engines: numbered binary messages over plain HTTP/1.1.

Each engine runs a small HTTP server on its allocated port (`psi`) and POSTs to its peer.  Under a node
the POSTs go to the local gateway's egress port with `Host: <service>.<peer>.svc`; the gateway carries
them over its one mTLS port to the peer's node, which forwards them to the peer engine's port.  Without
`ACCORD_EGRESS` the peer endpoint is dialled directly (`http://127.0.0.1:PORT` in tests).

Wire format (all paths under /v1/psi/<task id>/, header `X-Accord-Psi-From: <sender party>`):

    POST msg/<channel>/<seq>?last=0|1   body: raw bytes, Content-Length (<= MAX_BODY)   -> 200
    POST abort                          body: one line, why the sender gave up           -> 200
    GET  ping                                                                            -> 200

Messages on a channel are numbered from 0; `last=1` closes the channel.  Delivery is idempotent (a
retried message that already arrived is ignored), so the sender simply retries until it gets a 200.
The server answers *before* handing a message to the engine: once the final message is delivered the
receiver may exit, and the sender must already have its 200 by then.

Failure handling, in order of what a user sees:
- the peer is not up yet (engines start at slightly different times): every request is retried with
  exponential backoff (50 ms .. 1 s) for up to `peer_wait_s`; then `PeerUnreachable`.  Retried: transport
  errors, 429/502/503/504, and the gateway's 404 `X-Accord-Error: unknown-service` (the peer's engine
  is not registered at its node yet); any other answer is final;
- the peer vanishes mid-protocol: requests fail or pings go unanswered for `peer_timeout_s`; then
  `PeerLost("peer bob stopped responding during round 2")`.  A heartbeat thread pings the peer every
  second, so a waiting engine notices even when it has nothing to send;
- the peer fails on its side: it POSTs `abort` (best effort) and answers 410 from then on; then
  `PeerAborted`;
- the whole task exceeds `timeout_s`: `PeerLost` naming the round it was in.

Memory: received messages wait in the inbox until the protocol consumes them.  Nothing bounds a channel
but the protocol itself (the peer announces its set size in the handshake, and a channel carries at
most that many 32-byte points), which is the same order as the points the engine keeps anyway; a
bounded inbox could deadlock two engines that both send before they receive.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from accord.engines.psi.errors import (
    PeerAborted,
    PeerError,
    PeerLost,
    PeerUnreachable,
    ProtocolMismatch,
    PsiError,
)

log = logging.getLogger("accord.engines.psi")

MAX_BODY = 8 << 20
PARTY_HEADER = "X-Accord-Psi-From"
RETRY_STATUS = frozenset({429, 502, 503, 504})
HEARTBEAT_S = 1.0
# The node's gateway marks its own refusals (accord.gateway.refusals); "unknown-service" means the
# peer's engine is not registered there (yet, or any more): wait for it like for a 503.
GATEWAY_ERROR_HEADER = "X-Accord-Error"
GATEWAY_MESSAGE_HEADER = "X-Accord-Error-Message"
RETRY_GATEWAY_REASONS = frozenset({"unknown-service", "service-unavailable", "peer-unreachable"})


def _retryable(response: httpx.Response) -> bool:
    if response.status_code in RETRY_STATUS:
        return True
    return response.status_code == 404 and response.headers.get(GATEWAY_ERROR_HEADER) in RETRY_GATEWAY_REASONS


class Inbox:
    """Messages received from the peer, by (channel, seq), until the protocol takes them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: dict[tuple[str, int], tuple[bytes, bool]] = {}
        self._next: dict[str, int] = {}
        self.peer_abort: str | None = None
        self.local_abort = False
        self.last_seen = 0.0

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def deliver(self, channel: str, seq: int, last: bool, payload: bytes) -> None:
        with self._cond:
            self.last_seen = time.monotonic()
            if seq < self._next.get(channel, 0) or (channel, seq) in self._messages:
                return  # a retry of a message we already have
            self._messages[(channel, seq)] = (payload, last)
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        with self._cond:
            self.peer_abort = reason or "no reason given"
            self._cond.notify_all()

    def get(self, channel: str, seq: int, check: Callable[[], None]) -> tuple[bytes, bool]:
        """Wait for message `seq` of `channel`; `check()` runs between waits and raises to give up
        (it must raise once `peer_abort` is set)."""
        with self._cond:
            while True:
                item = self._messages.pop((channel, seq), None)
                if item is not None:
                    self._next[channel] = seq + 1
                    return item
                check()  # raises on a peer abort, a failed link, silence or timeout
                self._cond.wait(0.2)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PeerServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("psi link: " + format, *args)

    def _reply(self, status: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _route(self) -> tuple[list[str], dict[str, list[str]]] | None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        srv = self.server
        if parts[:2] != ["v1", "psi"] or len(parts) < 4:
            self._reply(404, "not a PSI engine path")
            return None
        if parts[2] != srv.task_id:
            self._reply(409, f"this engine runs task {srv.task_id!r}, not {parts[2]!r}")
            return None
        sender = self.headers.get(PARTY_HEADER, "")
        if sender != srv.peer:
            self._reply(403, f"this engine talks to {srv.peer!r} only, not {sender!r}")
            return None
        if srv.inbox.local_abort:
            self._reply(410, f"{srv.party} aborted the task")
            return None
        return parts[3:], urllib.parse.parse_qs(url.query)

    def do_GET(self) -> None:
        routed = self._route()
        if routed is None:
            return
        if routed[0] == ["ping"]:
            self._reply(200, "ok")
            self.server.inbox.touch()
        else:
            self._reply(404, "unknown path")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._reply(400, "bad Content-Length")
            return
        if length < 0 or length > MAX_BODY:
            self._reply(413, f"a message may carry at most {MAX_BODY} bytes")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        routed = self._route()
        if routed is None:
            return
        path, query = routed
        inbox = self.server.inbox
        if path == ["abort"]:
            self._reply(200, "ok")
            inbox.abort(body.decode(errors="replace")[:500])
            return
        if len(path) == 3 and path[0] == "msg" and path[2].isdigit():
            last = query.get("last", ["0"])[0] == "1"
            self._reply(200, "ok")
            inbox.deliver(path[1], int(path[2]), last, body)
            return
        self._reply(404, "unknown path")


class PeerServer(ThreadingHTTPServer):
    """The engine's listening side: accepts the peer's messages into an `Inbox`."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, host: str, port: int, *, task_id: str, party: str, peer: str) -> None:
        self.task_id = task_id
        self.party = party
        self.peer = peer
        self.inbox = Inbox()
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that dies mid-request resets its connection; that is reported by the protocol (as
        # "peer stopped responding"), not as a traceback on stderr, where only the reason belongs.
        log.debug("psi link: request from %s failed", client_address, exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()


@dataclass(frozen=True)
class LinkTimeouts:
    peer_wait_s: float = 120.0  # before the peer first answers
    peer_timeout_s: float = 30.0  # silence tolerated once it has answered
    task_timeout_s: float = 3600.0  # the whole exchange


@dataclass
class _Outgoing:
    channel: str
    seq: int
    last: bool
    payload: bytes


class PeerChannel:
    """Both directions of the link to the peer: server, sender thread, heartbeat, liveness.

    `round` is set by the protocol and only used to say where things broke.
    """

    def __init__(
        self,
        *,
        task_id: str,
        party: str,
        peer: str,
        endpoint: str,
        egress: str | None,
        listen_host: str,
        listen_port: int,
        timeouts: LinkTimeouts,
    ) -> None:
        self.task_id = task_id
        self.party = party
        self.peer = peer
        self.endpoint = endpoint
        self.egress = egress
        self.timeouts = timeouts
        self.round = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self._started = time.monotonic()
        self._deadline = self._started + timeouts.task_timeout_s
        self._last_ok = 0.0
        self._stopping = threading.Event()
        self._error: PsiError | None = None
        self._outgoing: queue.Queue[_Outgoing | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._prefix = f"/v1/psi/{urllib.parse.quote(task_id, safe='')}"
        headers = {PARTY_HEADER: party}
        if egress:
            base_url = egress.rstrip("/")
            headers["Host"] = endpoint
        else:
            base_url = endpoint if "://" in endpoint else f"http://{endpoint}"
        self._base_url = base_url
        self._headers = headers
        self.server = PeerServer(listen_host, listen_port, task_id=task_id, party=party, peer=peer)
        self._sender = threading.Thread(target=self._send_loop, name="psi-sender", daemon=True)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="psi-heartbeat", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen for the peer (call early: the peer may be ready before this engine is)."""
        self.server.start()

    def connect(self) -> None:
        """Start sending and pinging; requests retry until the peer answers or `peer_wait_s` passes."""
        self._sender.start()
        self._heartbeat.start()

    def close(self) -> None:
        self._stopping.set()
        self._outgoing.put(None)
        for thread in (self._sender, self._heartbeat):
            if thread.is_alive():
                thread.join(timeout=5)
        self.server.stop()

    def abort(self, reason: str) -> None:
        """Tell the peer (best effort, a couple of seconds at most) that this party gives up."""
        self.server.inbox.local_abort = True
        with contextlib.suppress(Exception), self._client(timeout=2.0) as client:
            client.post(f"{self._prefix}/abort", content=reason.encode()[:500])

    # -- messages --------------------------------------------------------------------------------

    def send(self, channel: str, seq: int, payload: bytes, last: bool) -> None:
        """Queue a message; the sender thread delivers messages in the order queued."""
        self.check()
        with self._pending_lock:
            self._pending += 1
        self._outgoing.put(_Outgoing(channel, seq, last, payload))

    def recv(self, channel: str, seq: int) -> tuple[bytes, bool]:
        payload, last = self.server.inbox.get(channel, seq, self.check)
        self.received_bytes += len(payload)
        return payload, last

    def flush(self) -> None:
        """Wait until every queued message was accepted by the peer."""
        while True:
            self.check()
            with self._pending_lock:
                if self._pending == 0:
                    return
            time.sleep(0.02)

    def check(self) -> None:
        """Raise if the link has failed, the peer is silent for too long, or the task is out of time."""
        if self._error is not None:
            raise self._error
        if self.server.inbox.peer_abort is not None:
            raise PeerAborted(f"peer {self.peer} aborted the task: {self.server.inbox.peer_abort}")
        now = time.monotonic()
        if now > self._deadline:
            raise PeerLost(
                f"the task timed out after {self.timeouts.task_timeout_s:g} s in round {self.round} "
                f"(waiting for peer {self.peer})"
            )
        last = max(self._last_ok, self.server.inbox.last_seen)
        if last == 0.0:
            if now - self._started > self.timeouts.peer_wait_s:
                raise PeerUnreachable(self._unreachable_message())
        elif now - last > self.timeouts.peer_timeout_s:
            raise PeerLost(f"peer {self.peer} stopped responding during round {self.round}")

    def _unreachable_message(self) -> str:
        via = f" via the gateway at {self.egress}" if self.egress else ""
        return (
            f"peer {self.peer} did not answer at {self.endpoint}{via} "
            f"within {self.timeouts.peer_wait_s:g} s (is its engine running?)"
        )

    # -- threads ---------------------------------------------------------------------------------

    def _client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            base_url=self._base_url,
            headers=self._headers,
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            trust_env=False,
        )

    def fail(self, error: PsiError) -> None:
        """Record a failure from any thread; the protocol sees it at its next `check()`."""
        if self._error is None:
            self._error = error

    def _request(self, client: httpx.Client, method: str, path: str, content: bytes | None) -> httpx.Response:
        """One request, retried on transport errors and gateway 5xx until the current window ends."""
        delay = 0.05
        while True:
            problem = ""
            try:
                response = client.request(method, f"{self._prefix}/{path}", content=content)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if not _retryable(response):
                    if response.status_code < 300:
                        self._last_ok = time.monotonic()
                    return response
                problem = f"HTTP {response.status_code} {response.headers.get(GATEWAY_ERROR_HEADER, '')}"
            now = time.monotonic()
            last = max(self._last_ok, self.server.inbox.last_seen)
            if last == 0.0:
                give_up = now - self._started > self.timeouts.peer_wait_s
                error: PeerError = PeerUnreachable(self._unreachable_message())
            else:
                give_up = now - last > self.timeouts.peer_timeout_s
                error = PeerLost(f"peer {self.peer} stopped responding during round {self.round}")
            if give_up or now > self._deadline:
                log.debug("giving up on %s %s: %s", method, path, problem)
                raise error
            if self._stopping.wait(delay):
                raise PeerLost(f"stopped while talking to peer {self.peer}")
            delay = min(delay * 2, 1.0)

    def _check_response(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        text = response.headers.get(GATEWAY_MESSAGE_HEADER) or response.text.strip()[:300]
        if status == 410:
            raise PeerAborted(f"peer {self.peer} aborted the task ({text})")
        if status in (403, 404, 409):
            raise ProtocolMismatch(f"peer {self.peer} refused {what}: HTTP {status} {text}")
        raise PeerError(f"peer {self.peer} failed on {what}: HTTP {status} {text}")

    def _send_loop(self) -> None:
        with self._client() as client:
            while True:
                item = self._outgoing.get()
                if item is None or self._stopping.is_set():
                    return
                path = f"msg/{urllib.parse.quote(item.channel, safe='')}/{item.seq}?last={int(item.last)}"
                try:
                    response = self._request(client, "POST", path, item.payload)
                    self._check_response(response, f"message {item.channel}/{item.seq}")
                except PsiError as exc:
                    self.fail(exc)
                    return
                except Exception as exc:  # pragma: no cover - defensive: never die silently
                    self.fail(PeerError(f"sending to peer {self.peer} failed: {exc!r}"))
                    return
                self.sent_bytes += len(item.payload)
                with self._pending_lock:
                    self._pending -= 1

    def _heartbeat_loop(self) -> None:
        with self._client(timeout=max(1.0, HEARTBEAT_S * 2)) as client:
            while not self._stopping.wait(HEARTBEAT_S):
                try:
                    response = client.get(f"{self._prefix}/ping")
                except Exception as exc:  # a missed ping is what liveness is measured by, not an error
                    log.debug("ping to %s failed: %s", self.peer, exc)
                    continue
                if response.status_code == 200:
                    self._last_ok = time.monotonic()
                elif response.status_code == 410:
                    self.fail(PeerAborted(f"peer {self.peer} aborted the task"))
