"""The egress port: where local engines send plain HTTP/1.1 (or CONNECT) for a peer, on loopback only.

An engine needs to know nothing of certificates, routes or transit: it sends
`Host: <service>.<peer>.svc` to `127.0.0.1:<egress port>`, and the gateway

1. parses the request strictly (`http1.py`; ambiguous framing is a 400 that reaches nobody),
2. picks the route to `<peer>` (404 `unknown-route` if there is none),
3. takes a pooled authenticated link to the peer, direct or through the transit hop (502
   `peer-unreachable` / `peer-unauthorized` when that fails, with the reason),
4. forwards the request with the route's path prefix applied, streaming the body, and streams the
   response back (`forward.relay`).

`CONNECT <service>.<peer>.svc:<port>` opens a byte tunnel instead, for engines that do not speak HTTP/1.1
(brpc, gRPC over h2): a fresh link to the peer, `Upgrade: accord-tunnel` on it, and on 101 the engine
gets `200 Connection Established` and a spliced stream to the peer's registered service.  The port in
the CONNECT target is ignored: the service name selects the engine port on the peer's side.

On a token route (authentication Token) the link presents no client certificate and every request is
signed with the route token (`tokens.py`): a small body is read first to sign its digest, then
forwarded.  `POST /v1/interconn/chan/...` (the PTP transport, any Host) is served by `ptp.py`; pushes for
a peer are forwarded to `transport.<peer>.svc` like any other request.

A Host naming this node's own domain is delivered locally (same policy path as a peer's request, with
this domain as the source), so an engine can address every party, itself included, the same way.
Engines may not address the reserved hosts (`handshake`, `transit`) of a peer: those belong to the
gateway, and letting an engine reach them would let it bypass the route policy.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from accord.gateway.forward import forward_pooled, request_head_bytes, send_refusal, splice
from accord.gateway.hosts import parse_service_host
from accord.gateway.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    RequestHead,
    check_buffered_chunks,
    parse_request_head,
    parse_response_head,
    serialize_head,
)
from accord.gateway.links import LinkPool, PeerConnector, classify_fresh_failure
from accord.gateway.local import PREFIX_HEADER, TUNNEL_PROTOCOL, LocalServices
from accord.gateway.ptp import (
    ClientGone,
    PtpError,
    PtpTransport,
    parse_ptp,
    ptp_code,
    ptp_method,
    send_ptp_refusal,
    unless_client_leaves,
)
from accord.gateway.refusals import GatewayError, NotAllowed, PeerUnauthorized, refusal_from_response
from accord.gateway.registry import RESERVED_SERVICES
from accord.gateway.stream import Stream, StreamClosed, bounded
from accord.gateway.table import RoutePlan
from accord.gateway.tokens import (
    AUTH_HEADERS,
    SIGNED_BODY_LIMIT,
    UNSIGNED,
    TokenBook,
    body_digest,
    sign_request,
)
from accord.gateway.tracking import ConnectionTracker

log = logging.getLogger(__name__)


def _ptp_host(host: bytes) -> bool:
    """Transport paths are served for any Host an engine sends, except another service's."""
    try:
        service, _ = parse_service_host(host)
    except GatewayError:
        return True
    return service == "transport"


# Never forwarded from an engine: the gateway sets them (an engine cannot forge a token signature).
# Node-to-node messages (`accord.<peer>.svc`) leave through the same egress port engines use; the gateway
# authenticates domains, not processes, so the node proves it is the node with a per-process secret
# that engines never see (their env is built from scratch).  It never leaves this machine.
NODE_SECRET_HEADER = b"x-accord-node-secret"
CONTROL_SERVICE = "accord"

DROP_OUTBOUND = frozenset({PREFIX_HEADER.lower(), NODE_SECRET_HEADER}) | AUTH_HEADERS


class EgressPort:
    def __init__(
        self,
        connector: PeerConnector,
        pool: LinkPool,
        local: LocalServices,
        tracker: ConnectionTracker,
        ptp: PtpTransport,
        *,
        tokens: TokenBook,
        idle_timeout: float = 600.0,
        node_secret: bytes = b"",
    ) -> None:
        self.node_secret = node_secret
        self.me = connector.table.me
        self.table = connector.table
        self.connector = connector
        self.pool = pool
        self.local = local
        self.tracker = tracker
        self.ptp = ptp
        self.tokens = tokens
        self.idle_timeout = idle_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = Stream(reader, writer, "engine")
        try:
            await self._serve(stream)
        finally:
            await stream.close()

    async def _serve(self, stream: Stream) -> None:
        while True:
            try:
                raw = await bounded(stream.read_head(MAX_HEAD_BYTES), self.idle_timeout)
                if raw is None:
                    return
                req = parse_request_head(raw)
            except GatewayError as exc:
                stream.write(exc.response(self.me))
                return
            except (OSError, StreamClosed, TimeoutError):
                return
            try:
                keep = await self._dispatch(stream, req)
            except GatewayError as exc:
                log.info("egress: refused %s %s: %s", req.method.decode(), req.host.decode(), exc)
                keep = await send_refusal(stream, req, exc, self.me)
            except (OSError, StreamClosed):
                return
            if not keep:
                return

    async def _dispatch(self, stream: Stream, req: RequestHead) -> bool:
        method = ptp_method(req.target)
        if method is not None and _ptp_host(req.host):
            return await self._ptp(stream, req, method)
        service, peer = parse_service_host(req.host)
        if req.framing is Framing.CHUNKED and stream.buf:
            check_buffered_chunks(stream.buf)
        if peer == self.me:
            if req.method == b"CONNECT":
                await self.local.connect_raw(stream, self.me, service)
                return False
            if req.upgrade is not None and req.upgrade.lower() == TUNNEL_PROTOCOL:
                await self.local.tunnel(stream, req, self.me, service)
                return False
            return await self.local.forward(stream, req, self.me, service)
        if service in RESERVED_SERVICES:
            raise NotAllowed(f"{service}.{peer}.svc is reserved for the gateways")
        if service == CONTROL_SERVICE and not self._from_node(req):
            raise NotAllowed(
                f"{service}.{peer}.svc carries node-to-node messages: only this node may send them"
            )
        if req.method == b"CONNECT":
            await self._connect(stream, service, peer)
            return False
        plan = self.table.plan(peer)  # refuse early (unknown route) before touching the pool
        target = plan.path_prefix.encode() + req.target if plan.path_prefix else req.target
        extra = [(PREFIX_HEADER, plan.path_prefix.encode())] if plan.path_prefix else []
        extra += await self._signature(plan, stream, req, req.target, req.host)
        head = request_head_bytes(req, target=target, drop=DROP_OUTBOUND, extra=extra)
        return await forward_pooled(
            stream,
            req,
            head,
            self.pool,
            peer,
            lambda: self._open(peer),
            tracker=self.tracker,
            domains=[peer, *([plan.transit] if plan.transit else [])],
            classify=self._classifier(peer),
        )

    def _from_node(self, req: RequestHead) -> bool:
        presented = req.headers.get(NODE_SECRET_HEADER) or b""
        return bool(self.node_secret) and hmac.compare_digest(presented, self.node_secret)

    async def _ptp(self, stream: Stream, req: RequestHead, method: str) -> bool:
        """A transport request: pushes for a peer are forwarded there, the rest is served locally."""
        try:
            try:
                p = parse_ptp(req, method)
                if method != "push" or not p.target or p.target == self.me:
                    return await self.ptp.handle_engine(stream, req, p)
                self.ptp.check_outbound_push(p)
                plan = self.table.plan(p.target)
            except GatewayError as exc:
                raise PtpError(ptp_code(exc), exc.message) from exc
            # the body is read ahead so that the engine's connection can be watched while the peer holds
            # the push (it may wait there for queue room): if the engine leaves, the forward is closed
            # and the peer drops the push instead of queueing one the engine will send again
            req = await self.ptp.buffer_push(stream, req)
            prefix = plan.path_prefix.encode()
            host = b"transport.%s.svc" % p.target.encode()
            extra = [(b"Host", host)]
            if prefix:
                extra.append((PREFIX_HEADER, prefix))
            try:
                extra += await self._signature(plan, stream, req, req.target, host)
            except GatewayError as exc:
                raise PtpError(ptp_code(exc), exc.message) from exc
            head = request_head_bytes(
                req, target=prefix + req.target, drop=DROP_OUTBOUND | {b"host"}, extra=extra
            )
            try:
                result = await unless_client_leaves(
                    stream,
                    forward_pooled(
                        stream,
                        req,
                        head,
                        self.pool,
                        p.target,
                        lambda: self._open(p.target),
                        tracker=self.tracker,
                        domains=[p.target, *([plan.transit] if plan.transit else [])],
                        classify=self._classifier(p.target),
                    ),
                )
            except GatewayError as exc:
                raise PtpError(ptp_code(exc), exc.message) from exc
            if isinstance(result, ClientGone):
                log.info("egress: PTP push for %s dropped: the engine left while it was held", p.target)
                return False
            return result
        except PtpError as exc:
            log.info("egress: PTP %s refused: %s %s", method, exc.code, exc.message)
            return await send_ptp_refusal(stream, req, exc)

    def _token(self, plan: RoutePlan) -> tuple[int, bytes]:
        tokens = self.tokens.tokens(self.table.route(plan.destination), plan.destination)
        if not tokens:
            raise PeerUnauthorized(
                f"no token agreed with {plan.destination} yet: the route handshake has not succeeded "
                "(see `accord route list`)"
            )
        return tokens[0]

    async def _signature(
        self, plan: RoutePlan, stream: Stream, req: RequestHead, target: bytes, host: bytes
    ) -> list[tuple[bytes, bytes]]:
        """Token routes: the request's signature fields (a small body is read, hashed and put back)."""
        if not plan.token:
            return []
        revision, token = self._token(plan)
        if req.framing is Framing.NONE:
            digest = body_digest(b"")
        elif req.framing is Framing.LENGTH and req.length <= SIGNED_BODY_LIMIT:
            body = await stream.read_exact(req.length)
            stream.buf[0:0] = body
            digest = body_digest(body)
        else:
            digest = UNSIGNED
        return sign_request(token, revision, self.me, req.method, target, host, digest)

    async def _open(self, peer: str) -> Stream:
        link, _ = await self.connector.open(peer)
        return link

    @staticmethod
    def _classifier(peer: str) -> Callable[[BaseException], GatewayError]:
        return lambda exc: classify_fresh_failure(exc, peer)

    async def _connect(self, stream: Stream, service: str, peer: str) -> None:
        link, plan = await self.connector.open(peer)
        try:
            host = b"%s.%s.svc" % (service.encode(), peer.encode())
            fields = [(b"Host", host), (b"Connection", b"upgrade"), (b"Upgrade", TUNNEL_PROTOCOL)]
            if plan.path_prefix:
                fields.append((PREFIX_HEADER, plan.path_prefix.encode()))
            if plan.token:
                revision, token = self._token(plan)
                fields += sign_request(token, revision, self.me, b"GET", b"/", host, body_digest(b""))
            link.write(serialize_head(b"GET " + plan.path_prefix.encode() + b"/ HTTP/1.1", fields))
            try:
                await link.drain()
                raw = await bounded(link.read_head(MAX_HEAD_BYTES), self.connector.connect_timeout)
            except (OSError, StreamClosed, TimeoutError) as exc:
                raise classify_fresh_failure(exc, peer) from exc
            if raw is None:
                raise classify_fresh_failure(None, peer)
            response = parse_response_head(raw, b"GET")
            if response.status != 101:
                raise refusal_from_response(response.status, response.headers.first_values(), via=peer)
        except BaseException:
            link.abort()
            raise
        stream.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        domains = [peer, *([plan.transit] if plan.transit else [])]
        with self.tracker.track(stream, link, domains=domains):
            await splice(stream, link)
