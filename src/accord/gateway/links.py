"""Outbound links: dialling a peer's public port (directly or through a transit hop) and pooling links.

**Dialling** (`PeerConnector.open`).  A direct route is TCP + TLS 1.3 to the endpoint, presenting our
certificate, then the fingerprint check of the peer's certificate against its pin (see `tls.py`).  A
transit route (alice -> carol -> bob) dials carol the same way, asks carol to open a byte tunnel to bob
(`Upgrade: accord-transit` on `transit.carol.svc`), then runs a *second* TLS handshake inside that tunnel,
with bob, pinned to bob's certificate.  What alice and bob exchange is encrypted end to end: carol
relays TLS records it cannot read, and bob authenticates alice by her own certificate, not by carol's.
After that the link is used exactly like a direct one.

Failures become typed refusals with the reason a route status can show: `PeerUnreachable` (refused,
timed out, the endpoint does not speak TLS, the transit hop refused) or `PeerUnauthorized` (the peer
presented a certificate other than the pinned one; no pin for the peer).  A peer refusing *our*
certificate is only visible on the first read in TLS 1.3 (the server checks the client's certificate
after the client has finished its handshake, and asyncio drops the connection without an alert), so
`classify_fresh_failure` reads "a fresh link closed before answering" as `PeerUnauthorized`.

**Pooling** (`LinkPool`).  Idle links are kept per key (a peer domain, or a local port) and reused LIFO,
so a burst of engine requests shares a few warm TLS connections instead of paying a handshake each.
A link goes back to the pool only after a complete, keep-alive exchange; one that saw an error, a
`Connection: close` or an upgrade never does.  Idle links expire after `idle_timeout` (shorter than the
peer's server-side idle timeout, so the client side closes first and the classic keep-alive race stays
rare; the one request that can still hit it is retried once when that is safe, see `forward.py`).
`discard(key)` closes every idle link of a key: the gateway calls it when a route or pin changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Hashable

from accord.gateway.http1 import MAX_HEAD_BYTES, parse_response_head, serialize_head
from accord.gateway.refusals import (
    GatewayError,
    PeerUnauthorized,
    PeerUnreachable,
    refusal_from_response,
)
from accord.gateway.stream import STREAM_LIMIT, Stream, StreamClosed, bounded, tune
from accord.gateway.table import Hop, RoutePlan, RoutingTable
from accord.gateway.tls import (
    Identity,
    anonymous_client_context,
    client_context,
    peer_fingerprint,
    short,
    system_client_context,
)

log = logging.getLogger(__name__)

TRANSIT_PROTOCOL = b"accord-transit"
TRANSIT_TO_HEADER = b"X-Accord-Transit-To"


class UpstreamClosedEarly(PeerUnreachable):
    """The upstream closed before sending any response byte (a stale pooled link, typically)."""


def classify_fresh_failure(exc: BaseException | None, peer: str) -> GatewayError:
    """What it means when a *fresh* link to `peer` ends before the first answer byte.

    An Accord gateway that completed the TLS handshake always answers a request, except in one case:
    in TLS 1.3 the server checks the client's certificate *after* the client considers the handshake
    done, and a server that rejects it drops the connection (asyncio sends no alert).  So a fresh link
    that closes or resets before answering means "the peer does not accept our certificate".
    """
    if isinstance(exc, GatewayError) and not isinstance(exc, UpstreamClosedEarly):
        return exc
    if isinstance(exc, TimeoutError):
        return PeerUnreachable(f"{peer} accepted the connection but did not answer in time")
    if exc is None or isinstance(exc, UpstreamClosedEarly | ConnectionError | ssl.SSLError | StreamClosed):
        return PeerUnauthorized(
            f"{peer} closed the connection right after the TLS handshake without answering: it does not "
            "accept our certificate (it has no Domain for us, or pins another certificate of ours)"
        )
    return PeerUnreachable(f"connection to {peer} failed: {type(exc).__name__}: {exc}")


class PeerConnector:
    """Opens authenticated links to peers along the routes of a `RoutingTable`."""

    def __init__(
        self,
        table: RoutingTable,
        identity: Identity,
        *,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.table = table
        self.identity = identity
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self._ctx = client_context(identity)
        self._anonymous_ctx = anonymous_client_context()

    async def open(self, destination: str) -> tuple[Stream, RoutePlan]:
        """An authenticated link to `destination` (raises a `GatewayError` saying why not)."""
        plan = self.table.plan(destination)
        link = await self._dial(plan.first, token=plan.token)
        if plan.final is None:
            link.label = destination
            return link, plan
        try:
            await self._through_transit(link, plan.first, plan.final)
        except BaseException:
            link.abort()
            raise
        link.label = f"{destination} via {plan.first.domain}"
        return link, plan

    async def _dial(self, hop: Hop, *, token: bool = False) -> Stream:
        """TCP + TLS to `hop`.  mTLS routes present our certificate and require the pinned one back.

        Token routes present no certificate (a TLS-terminating middlebox would not pass it on) and accept
        either the peer's pinned certificate (no middlebox) or, failing that, a certificate valid for the
        endpoint's host name under the system CAs (the institution's L7 gateway): the requests themselves
        are authenticated by the route token.
        """
        link = await self._connect(hop, self._anonymous_ctx if token else self._ctx)
        if not token:
            self._check_pin(link, hop)
            return link
        if peer_fingerprint(link.writer) == hop.fingerprint:
            return link
        link.abort()
        try:
            return await self._connect(hop, system_client_context(), server_hostname=hop.host)
        except PeerUnreachable as exc:
            raise PeerUnauthorized(
                f"{hop.domain}'s endpoint {hop.host}:{hop.port} presented a certificate that is neither the "
                f"pinned one nor valid for {hop.host} under the system CAs ({exc.message})"
            ) from exc

    async def _connect(self, hop: Hop, ctx: ssl.SSLContext, *, server_hostname: str | None = None) -> Stream:
        where = f"{hop.domain} at {hop.host}:{hop.port}"
        try:
            reader, writer = await bounded(
                asyncio.open_connection(hop.host, hop.port, limit=STREAM_LIMIT), self.connect_timeout
            )
        except TimeoutError as exc:
            raise PeerUnreachable(f"cannot connect to {where}: timed out") from exc
        except OSError as exc:
            raise PeerUnreachable(f"cannot connect to {where}: {_describe(exc)}") from exc
        link = Stream(reader, writer, hop.domain)
        try:
            await writer.start_tls(
                ctx, server_hostname=server_hostname or hop.host, ssl_handshake_timeout=self.handshake_timeout
            )
        except (OSError, TimeoutError) as exc:
            link.abort()
            raise PeerUnreachable(
                f"TLS handshake with {where} failed ({_describe(exc)}); is the endpoint an Accord public "
                "port (https), and not plain HTTP or another service?"
            ) from exc
        tune(writer)
        return link

    def _check_pin(self, link: Stream, hop: Hop) -> None:
        presented = peer_fingerprint(link.writer)
        if presented != hop.fingerprint:
            link.abort()
            raise PeerUnauthorized(
                f"{hop.domain} presented certificate {short(presented or '')} but the pinned certificate "
                f"of Domain {hop.domain} is {short(hop.fingerprint)}; if {hop.domain} replaced its "
                f"certificate, update it with `accord domain add {hop.domain} --cert FILE`"
            )

    async def _through_transit(self, link: Stream, via: Hop, final: Hop) -> None:
        head = serialize_head(
            b"GET " + (via.path_prefix.encode() or b"") + b"/transit HTTP/1.1",
            [
                (b"Host", b"transit.%s.svc" % via.domain.encode()),
                (b"Connection", b"upgrade"),
                (b"Upgrade", TRANSIT_PROTOCOL),
                (TRANSIT_TO_HEADER, final.domain.encode()),
            ],
        )
        link.write(head)
        try:
            await link.drain()
            raw = await bounded(link.read_head(MAX_HEAD_BYTES), self.connect_timeout)
        except (OSError, StreamClosed, TimeoutError) as exc:
            raise classify_fresh_failure(exc, via.domain) from exc
        if raw is None:
            raise classify_fresh_failure(None, via.domain)
        response = parse_response_head(raw, b"GET")
        if response.status != 101:
            raise refusal_from_response(response.status, response.headers.first_values(), via=via.domain)
        if link.buf:
            raise PeerUnreachable(f"transit {via.domain} sent unexpected bytes after switching protocols")
        try:
            await link.writer.start_tls(self._ctx, ssl_handshake_timeout=self.handshake_timeout)
        except ssl.SSLError as exc:
            raise PeerUnreachable(
                f"TLS handshake with {final.domain} through {via.domain} failed ({exc.reason or exc})"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"cannot reach {final.domain} through {via.domain}: {exc}") from exc
        tune(link.writer)
        self._check_pin(link, final)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


Opener = Callable[[], Awaitable[Stream]]


class LinkPool:
    """Idle links per key; see the module docstring."""

    def __init__(self, *, max_idle_per_key: int = 32, idle_timeout: float = 50.0) -> None:
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, list[tuple[float, Stream]]] = {}
        self._generation: dict[Hashable, int] = {}
        self.opened = 0  # links dialled (for tests and metrics)
        self.reused = 0

    async def acquire(self, key: Hashable, opener: Opener) -> tuple[Stream, bool, int]:
        """(link, reused, generation): an idle link of `key` if a live one exists, else a new one."""
        generation = self._generation.get(key, 0)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            since, link = idle.pop()
            if now - since < self.idle_timeout and not link.closed and not link.buf:
                self.reused += 1
                return link, True, generation
            link.abort()
        link = await opener()
        self.opened += 1
        return link, False, generation

    def release(self, key: Hashable, link: Stream, generation: int) -> None:
        """Return a link after a complete keep-alive exchange (dropped if its key was discarded since)."""
        if link.closed or link.buf or self._generation.get(key, 0) != generation:
            link.abort()
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle_per_key:
            link.abort()
            return
        idle.append((time.monotonic(), link))

    def discard(self, key: Hashable) -> int:
        """Close every idle link of `key` and refuse links of the old generation on release."""
        self._generation[key] = self._generation.get(key, 0) + 1
        idle = self._idle.pop(key, [])
        for _, link in idle:
            link.abort()
        return len(idle)

    def expire(self) -> int:
        """Close links idle for longer than `idle_timeout` (called periodically)."""
        now = time.monotonic()
        closed = 0
        for key, idle in list(self._idle.items()):
            keep = []
            for since, link in idle:
                if now - since < self.idle_timeout and not link.closed:
                    keep.append((since, link))
                else:
                    link.abort()
                    closed += 1
            self._idle[key] = keep
        return closed

    def idle_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, []))
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        for key in list(self._idle):
            self.discard(key)
        with contextlib.suppress(Exception):
            self._idle.clear()
