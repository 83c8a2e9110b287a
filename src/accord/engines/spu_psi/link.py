"""The yacl link between the two SPU engines: blackbox through the gateway, or direct for benchmarks.

**Blackbox** (under a node: `ACCORD_EGRESS` is set).  yacl's "blackbox" transport listens on nothing:
every message is a `POST /v1/interconn/chan/push` to one local transport address, and the engine
long-polls `.../pop` there for its peer's messages.  That address is the node's egress port, whose PTP
transport forwards pushes to the peer's gateway over the one mTLS public port (`accord.gateway.ptp`).
yacl reads its transport settings from environment variables with dots in their names, set here before
the link is created:

    system.transport           ACCORD_EGRESS (http://127.0.0.1:<egress port>)
    config.session_id          the task id: the gateway accepts only sessions a running task registered
    config.trace_id            the task id
    config.inst_id.<party>     the party's domain, for every party
    config.token               the task id -- NOT a secret: the header is forwarded to the peer

Node ids are the party domains (`add_party(domain, domain)`), ranks follow the sorted party names (both
engines agree without talking).  Timeouts: `recv_timeout_ms` bounds every receive including the link
handshake (the wait for the peer's engine), see `config.SpuPsiConfig.recv_timeout_s`; `http_timeout_ms`
is above the gateway's longest push wait (a push that finds the peer's queue full waits up to 120 s for
room, then answers QueueFull, which yacl retries): a shorter client timeout could make yacl resend a
push the gateway later queues anyway.

**Direct** (no `ACCORD_EGRESS`, a port named `spu` allocated, peers' `spu` endpoints `host:port`):
yacl's brpc on its own listening port, as in SPU's own examples.  Only for runs without a node (the
benchmark's decomposition of the gateway's cost); under a node engines never listen for peers.

**Control messages** on the same link, around libpsi (JSON, both directions, in this order):

    hello  {"v", "task", "party", "digest", "ok", "reason", "keys"}  before any PSI traffic: the
           config digests must match; a party whose input failed says so (ok=false, the error *kind*
           only) so its peer fails at once instead of waiting; "keys" (the distinct key count, which
           libpsi reveals anyway) lets both skip libpsi when one side is empty
    fin    {"v", "ok", "reason"}  after libpsi and after the receiver staged its output: nobody commits
           an output until both said ok, so a party failing at any point leaves no output anywhere.
           It also keeps each engine alive until its peer is done: `psi_execute` does not end at the
           same moment at both parties, and its last message may still be in yacl's send queue when it
           returns (over a direct brpc link a peer that already left makes that send fail and abort
           the process; through the gateway the push is queued there whoever has left)

yacl numbers its messages per link (a receive that timed out consumes a sequence number), so a receive
is never retried and a control message is never sent while libpsi runs.

The link is set up in a thread (`start_link`) while the engine reads its input: loading SPU's native
modules, probing and the wait for the peer's engine overlap the read; the thread sends nothing on the
link, the hello goes out from the main thread afterwards.  Before yacl, `probe_transport` asks both
gateways about the session (yacl retries a refused push for ever, silently); every native call that can
block (link creation, receives, `psi_execute`) runs in a thread (`run_interruptibly`) and the main
thread waits for it, or for the link-setup thread, in short joins, so SIGTERM is handled at once, and
`close_link` never calls `stop_link` while such a call is still running (it would wait for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from accord.engines.psi.errors import (
    ConfigError,
    PeerAborted,
    PeerError,
    PeerLost,
    PeerUnreachable,
    ProtocolMismatch,
    PsiError,
)
from accord.engines.sdk import EngineContractError, TaskContext
from accord.engines.spu_psi import native

log = logging.getLogger("accord.engines.spu_psi")

PORT_NAME = "spu"
CONTROL_VERSION = 1
HTTP_TIMEOUT_MS = 150_000
CONNECT_RETRY_INTERVAL_MS = 200
LINK_WATCHDOG_MARGIN_S = 15.0
PROBE_TOPIC = "accord-probe"
PTP_OK = "E0000000000"
T = TypeVar("T")


@dataclass(frozen=True)
class LinkPlan:
    """Everything needed to create the link, decided before any network traffic."""

    mode: str  # "blackbox" | "direct"
    session: str
    parties: list[str]
    rank: int
    recv_timeout_s: float
    transport: str = ""
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def party(self) -> str:
        return self.parties[self.rank]

    @property
    def peer_rank(self) -> int:
        return 1 - self.rank

    @property
    def peer(self) -> str:
        return self.parties[self.peer_rank]

    def describe(self) -> str:
        if self.mode == "blackbox":
            return f"blackbox link through the gateway at {self.transport}, session {self.session}"
        return f"direct link {self.addresses[self.party]} <-> {self.addresses[self.peer]}"


def plan_link(
    ctx: TaskContext, environ: Mapping[str, str], parties: list[str], party: str, recv_timeout_s: float
) -> LinkPlan:
    rank = parties.index(party)
    egress = environ.get("ACCORD_EGRESS", "").strip()
    if egress:
        if not egress.startswith(("http://", "https://")):
            egress = f"http://{egress}"
        return LinkPlan("blackbox", ctx.task_id, parties, rank, recv_timeout_s, transport=egress.rstrip("/"))
    try:
        port = ctx.port(PORT_NAME)
    except EngineContractError:
        raise ConfigError(
            "no way to reach the peer: ACCORD_EGRESS is not set (the node sets it to its egress port) and "
            f"no port named {PORT_NAME!r} is allocated for a direct link"
        ) from None
    addresses = {party: f"127.0.0.1:{port}"}
    for other in parties:
        if other == party:
            continue
        cluster_party = next((p for p in ctx.cluster.parties if p.name == other), None)
        if cluster_party is None:
            raise ConfigError(f"TASK_CLUSTER_DEFINE: no party {other!r}")
        try:
            endpoint = cluster_party.endpoint(PORT_NAME)
        except EngineContractError as exc:
            raise ConfigError(f"TASK_CLUSTER_DEFINE: {exc}") from None
        endpoint = endpoint.removeprefix("http://")
        if ":" not in endpoint:
            raise ConfigError(
                f"TASK_CLUSTER_DEFINE: {other}'s {PORT_NAME!r} endpoint {endpoint!r} has no port; a direct "
                "link needs host:port (under a node the link goes through the gateway instead)"
            )
        addresses[other] = endpoint
    return LinkPlan("direct", ctx.task_id, parties, rank, recv_timeout_s, addresses=addresses)


def open_link(plan: LinkPlan, *, recv_timeout_s: float | None = None) -> Any:
    """Create the yacl link context; waits (up to the receive timeout) for the peer's engine."""
    libspu = native.load().libspu
    timeout_s = recv_timeout_s if recv_timeout_s is not None else plan.recv_timeout_s
    desc = libspu.link.Desc()
    desc.id = plan.session
    desc.recv_timeout_ms = int(timeout_s * 1000)
    desc.http_timeout_ms = HTTP_TIMEOUT_MS
    desc.connect_retry_interval_ms = CONNECT_RETRY_INTERVAL_MS
    desc.connect_retry_times = max(10, math.ceil(timeout_s * 1000 / CONNECT_RETRY_INTERVAL_MS))
    if plan.mode == "blackbox":
        set_link_environment(plan)
        desc.link_type = "blackbox"
        desc.brpc_channel_protocol = "http"
        desc.brpc_channel_connection_type = "pooled"
        for name in plan.parties:
            desc.add_party(name, name)
    else:
        desc.brpc_channel_protocol = "baidu_std"
        for name in plan.parties:
            desc.add_party(name, plan.addresses[name])
    watchdog = timeout_s + LINK_WATCHDOG_MARGIN_S
    try:
        lctx = run_interruptibly(lambda: libspu.link.create_brpc(desc, plan.rank), "link", timeout=watchdog)
    except TimeoutError:
        raise PeerUnreachable(
            f"the link with {plan.peer} did not come up within {watchdog:g} s ({plan.describe()})"
        ) from None
    except RuntimeError as exc:
        reason = yacl_reason(exc)
        if "timeout" in reason.lower():
            raise PeerUnreachable(
                f"{plan.peer}'s engine did not join the link within {timeout_s:g} s ({plan.describe()})"
            ) from None
        raise PeerUnreachable(f"cannot link with {plan.peer} ({plan.describe()}): {reason}") from None
    _open_links.append(lctx)  # never destroyed: the destructor waits for yacl's current long poll (1 s)
    return lctx


class PendingLink:
    """The link, created in a thread while the main thread reads the input (`start_link`).

    The thread loads SPU's native modules, probes the gateways (blackbox) and creates the link, which
    includes waiting for the peer's engine; none of it depends on the input, and nothing is sent on
    the link: the hello goes out from the main thread once the input is ready (or failed).  `result`
    waits in short joins, so SIGTERM is still handled at once; the link creation itself keeps its own
    watchdog (`open_link`).
    """

    def __init__(self, plan: LinkPlan) -> None:
        self.plan = plan
        self.elapsed_s = 0.0  # how long loading, probing and linking took (when done)
        self.http: httpx.Client | None = None  # blackbox: the probe's client, for `drain_probe`
        self._box: dict[str, Any] = {}
        set_link_environment(plan)
        self._thread = threading.Thread(target=self._create, name="spu-link-setup", daemon=True)
        self._thread.start()

    def _create(self) -> None:
        started = time.monotonic()
        try:
            native.load()
            if self.plan.mode == "blackbox":
                self.http = httpx.Client(timeout=10.0)
                probe_transport(self.plan, client=self.http)
            self._box["link"] = open_link(self.plan)
        except BaseException as exc:
            self._box["error"] = exc
        finally:
            self.elapsed_s = time.monotonic() - started

    def result(self, timeout: float | None = None) -> Any:
        """The link context, or what creating it raised; TimeoutError if not ready within `timeout`
        (the creation then goes on in its thread: the process ends with `os._exit`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            self._thread.join(0.2)
            if deadline is not None and self._thread.is_alive() and time.monotonic() > deadline:
                raise TimeoutError(f"the link with {self.plan.peer} was not up within {timeout:g} s")
        if "error" in self._box:
            raise self._box["error"]
        return self._box["link"]


def start_link(plan: LinkPlan) -> PendingLink:
    """Start creating the link in the background (see `PendingLink`)."""
    return PendingLink(plan)


def set_link_environment(plan: LinkPlan) -> None:
    """yacl's blackbox settings into the environment (only what differs: `start_link` sets them in the
    main thread, so the link thread never writes the environment while another thread may read it)."""
    if plan.mode != "blackbox":
        return
    wanted = blackbox_environment(plan)
    changed = {name: value for name, value in wanted.items() if os.environ.get(name) != value}
    if changed:
        os.environ.update(changed)


def blackbox_environment(plan: LinkPlan) -> dict[str, str]:
    """yacl's blackbox settings (names with dots, read with getenv when the link is created)."""
    variables = {
        "system.transport": plan.transport,
        "config.session_id": plan.session,
        "config.trace_id": plan.session,
        "config.token": plan.session,
    }
    variables.update({f"config.inst_id.{name}": name for name in plan.parties})
    return variables


_LOCATION = re.compile(r"^\[[^\]]*\]\s*")


def yacl_reason(exc: BaseException) -> str:
    """One line from a yacl/libpsi exception: the message without 'what:', location and stack trace."""
    for line in str(exc).splitlines():
        text = line.strip().removeprefix("what:").strip()
        if text and not text.startswith(("stacktrace", "#")):
            return _LOCATION.sub("", text)[:300]
    return type(exc).__name__


def peer_failure(exc: BaseException, peer: str, phase: str) -> PsiError:
    """Map a yacl/libpsi RuntimeError to the engine's typed errors."""
    reason = yacl_reason(exc)
    lowered = reason.lower()
    if "get data timeout" in lowered or "timeout" in lowered:
        return PeerLost(f"{peer} stopped answering {phase} ({reason})")
    if re.search(r"E0000000\d{3}", reason):
        return PeerError(f"the gateway refused a message {phase} ({reason})")
    return PsiError(f"libpsi failed {phase}: {reason}")


class Control:
    """The hello and fin messages on the link (see the module docstring)."""

    def __init__(self, lctx: Any, plan: LinkPlan) -> None:
        self._lctx = lctx
        self._plan = plan

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"v": CONTROL_VERSION, **message}, separators=(",", ":"))
        try:
            self._lctx.send(self._plan.peer_rank, body)
        except RuntimeError as exc:
            what = f"while sending its {message.get('type', 'message')}"
            raise peer_failure(exc, self._plan.peer, what) from None

    def receive(self, what: str) -> dict[str, Any]:
        try:
            raw = run_interruptibly(lambda: self._lctx.recv(self._plan.peer_rank), f"receive-{what}")
        except RuntimeError as exc:
            error = peer_failure(exc, self._plan.peer, f"before its {what}")
            if isinstance(error, PeerLost):
                raise PeerLost(
                    f"{self._plan.peer} sent no {what} within {self._plan.recv_timeout_s:g} s"
                ) from None
            raise error from None
        try:
            message = json.loads(bytes(raw).decode())
        except ValueError:
            raise ProtocolMismatch(f"{self._plan.peer} sent a malformed {what}") from None
        if not isinstance(message, dict) or message.get("type") != what:
            raise ProtocolMismatch(f"{self._plan.peer} sent something else than its {what}")
        if message.get("v") != CONTROL_VERSION:
            raise ProtocolMismatch(
                f"{self._plan.peer} speaks control version {message.get('v')!r}, "
                f"this engine {CONTROL_VERSION}"
            )
        if not message.get("ok"):
            raise PeerAborted(f"{self._plan.peer} failed ({message.get('reason') or 'no reason given'})")
        return message

    def hello(self, *, digest: str, keys: int) -> dict[str, Any]:
        self.send(
            {
                "type": "hello",
                "task": self._plan.session,
                "party": self._plan.party,
                "digest": digest,
                "ok": True,
                "keys": keys,
            }
        )
        answer = self.receive("hello")
        if answer.get("task") != self._plan.session or answer.get("party") != self._plan.peer:
            raise ProtocolMismatch(
                f"the peer on the link is {answer.get('party')!r} of task {answer.get('task')!r}, expected "
                f"{self._plan.peer!r} of {self._plan.session!r}"
            )
        if answer.get("digest") != digest:
            raise ProtocolMismatch(
                f"{self._plan.peer} runs a different psi config (protocol, receivers, join, duplicates "
                "or the number of key columns differ)"
            )
        return answer

    def fin(self) -> None:
        self.send({"type": "fin", "ok": True})
        self.receive("fin")

    def fail(self, what: str, kind: str) -> None:
        """Best effort: tell the peer we give up (`kind` only: the peer may show it to its users)."""
        try:
            self.send({"type": what, "ok": False, "reason": f"{self._plan.party} failed ({kind})"})
        except PsiError as exc:
            log.info("could not tell %s that we failed: %s", self._plan.peer, exc)


_native_calls: set[threading.Thread] = set()
_open_links: list[Any] = []


def native_call_running() -> bool:
    """True while a call started by `run_interruptibly` has not returned (even if its caller gave up)."""
    for thread in list(_native_calls):
        if not thread.is_alive():
            _native_calls.discard(thread)
    return bool(_native_calls)


def close_link(lctx: Any, *, timeout: float = 10.0) -> None:
    """`stop_link`, unless libpsi or yacl is still inside a call on this link (then it would wait for
    that call forever: the process is about to end anyway), and never for longer than `timeout`."""
    if native_call_running():
        log.info("not stopping the link: a native call on it is still running")
        return
    try:
        run_interruptibly(lctx.stop_link, "stop-link", timeout=timeout)
    except TimeoutError:
        log.warning("stop_link did not return within %g s", timeout)
    except Exception as exc:
        log.debug("stop_link: %s", exc)


def run_interruptibly(fn: Callable[[], T], name: str, *, timeout: float | None = None) -> T:
    """Run a long native call in a thread so the main thread still handles signals (SIGTERM).

    TimeoutError after `timeout` seconds; the native call then still runs, which is why the engine
    process always ends with `os._exit` (see `party.py`).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    _native_calls.add(thread)
    thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while thread.is_alive():
        thread.join(0.2)
        if deadline is not None and thread.is_alive() and time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not finish within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


# -- asking the gateways first ---------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_envelope(data: bytes) -> tuple[str, str]:
    """(code, message) of the transport's `TransportOutbound {bytes payload=1; string code=2; ...=3}`."""
    fields: dict[int, bytes] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            if key & 7 == 2:
                length, pos = _read_varint(data, pos)
                fields[key >> 3] = data[pos : pos + length]
                pos += length
            elif key & 7 == 0:
                _, pos = _read_varint(data, pos)
            else:
                break
    except IndexError:
        return "", "truncated answer"
    return fields.get(2, b"").decode(errors="replace"), fields.get(3, b"").decode(errors="replace")


def probe_transport(plan: LinkPlan, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
    """Before yacl: this node's gateway knows the session, and the peer's gateway accepts our pushes.

    yacl retries a refused push without end and without a word, so a session the peer's node never
    registered (or a route that is down) would look like a silent peer.  One `peek` at our gateway and
    one 1-byte push on the probe topic (a queue yacl never reads; the peer takes it off after the hello,
    `drain_probe`) turn that into an immediate error that says which side refused and why.  `client`:
    one to reuse for `drain_probe` (making an httpx client costs about 20 ms: its TLS context).
    """
    headers = {
        "x-ptp-session-id": plan.session,
        "x-ptp-topic": PROBE_TOPIC,
        "x-ptp-source-node-id": plan.party,
    }
    base = plan.transport.rstrip("/")
    try:
        with _borrowed(client, timeout) as http:
            own = http.post(
                f"{base}/v1/interconn/chan/peek", headers={**headers, "x-ptp-target-node-id": plan.party}
            )
            code, message = decode_envelope(own.content) if own.status_code == 200 else ("", own.text)
            if code != PTP_OK:
                raise PsiError(
                    f"this node's gateway refused PTP session {plan.session!r}: {code or own.status_code} "
                    f"{message.strip()[:200]}"
                )
            push = http.post(
                f"{base}/v1/interconn/chan/push",
                headers={**headers, "x-ptp-target-node-id": plan.peer},
                content=b"\x00",
            )
            code, message = decode_envelope(push.content) if push.status_code == 200 else ("", push.text)
            if code != PTP_OK:
                raise PeerUnreachable(
                    f"{plan.peer}'s side refused PTP session {plan.session!r}: {code or push.status_code} "
                    f"{message.strip()[:200]}"
                )
    except httpx.HTTPError as exc:
        raise PsiError(f"cannot reach the gateway's transport at {base}: {exc}") from None


def drain_probe(plan: LinkPlan, *, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
    """Take the peer's probe byte off our queue (best effort; after the hello it has surely arrived)."""
    headers = {
        "x-ptp-session-id": plan.session,
        "x-ptp-topic": PROBE_TOPIC,
        "x-ptp-source-node-id": plan.party,
        "x-ptp-target-node-id": plan.peer,
    }
    try:
        url = f"{plan.transport.rstrip('/')}/v1/interconn/chan/peek"
        with _borrowed(client, timeout) as http:
            http.post(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        log.debug("draining the probe: %s", exc)


@contextlib.contextmanager
def _borrowed(client: httpx.Client | None, timeout: float) -> Iterator[httpx.Client]:
    """`client` as it is (its owner closes it), or a new one for this block."""
    if client is not None:
        yield client
        return
    with httpx.Client(timeout=timeout) as own:
        yield own
