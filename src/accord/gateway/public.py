"""The public port: the only port a domain opens to the world (TLS 1.3, mutual certificates, HTTP/1.1).

Order of checks on every connection, each one before the next can run:

1. **TLS handshake** with the current pinned-peer context (`tls.server_context`): no certificate or an
   unpinned one fails here, before any HTTP byte is read; nothing reaches a handler.
2. **Identity**: the fingerprint of the client's certificate must be a pin; the matching Domain is the
   source domain for everything on this connection.  It is re-checked before every request, so a pin
   revoked while a keep-alive connection idles takes effect at once (the gateway also aborts such
   connections proactively).  Only while some peer is granted token authentication (an inbound Token
   route) does the port also admit clients *without* a certificate; on such a connection every request
   must carry a valid token signature (`tokens.py`), checked before anything else, and only the token
   handshake may come unsigned.
3. **Strict parsing** of the request head (`http1.py`): anything ambiguous is a 400.
4. **Host routing**: `<service>.<me>.svc`.  Reserved hosts are answered by the gateway itself:
   `handshake.<me>.svc` (the route handshake, `handshake.py`), `transit.<me>.svc` (relay a byte
   tunnel to another domain, below) and `transport.<me>.svc` (PTP pushes from peers, `ptp.py`).
   Any other service goes through the registry policy (404 unknown, 403 not allowed) to the local
   engine.

**Transit** (this node as carol, between alice and bob): alice asks, on her authenticated connection,
`Upgrade: accord-transit` with `X-Accord-Transit-To: bob`.  carol relays only if bob is a domain she pins
and reaches directly; she opens plain TCP to bob's public port, answers 101, and splices.  alice then
runs TLS *with bob* inside the tunnel, so carol sees only TLS records and logs only metadata (who, to
whom, when, how many bytes).  carol's own identity plays no part in what bob accepts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from accord.gateway import handshake
from accord.gateway.forward import send_refusal, splice
from accord.gateway.hosts import parse_service_host
from accord.gateway.http1 import (
    MAX_HEAD_BYTES,
    Framing,
    RequestHead,
    check_buffered_chunks,
    parse_request_head,
)
from accord.gateway.links import TRANSIT_PROTOCOL, TRANSIT_TO_HEADER
from accord.gateway.local import TUNNEL_PROTOCOL, LocalServices, strip_prefix
from accord.gateway.ptp import PtpError, PtpTransport, send_ptp_refusal
from accord.gateway.refusals import (
    BadRequest,
    GatewayError,
    Misdirected,
    NotAllowed,
    PeerUnreachable,
)
from accord.gateway.stream import STREAM_LIMIT, Stream, StreamClosed, bounded, tune
from accord.gateway.table import RoutingTable
from accord.gateway.tls import Identity, peer_fingerprint, server_context
from accord.gateway.tokens import (
    AUTH_HEADERS,
    SIGNED_BODY_LIMIT,
    UNSIGNED,
    TokenBook,
    TokenVerifier,
    Unauthenticated,
    body_digest,
)
from accord.gateway.tracking import ConnectionTracker
from accord.names import DNS_LABEL

log = logging.getLogger(__name__)
transit_log = logging.getLogger("accord.gateway.transit")


class PublicPort:
    def __init__(
        self,
        table: RoutingTable,
        identity: Identity,
        local: LocalServices,
        tracker: ConnectionTracker,
        ptp: PtpTransport,
        *,
        inbound_tokens: TokenBook,
        verifier: TokenVerifier,
        on_token: Callable[[str, int, bytes], Awaitable[None]],
        handshake_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.me = table.me
        self.table = table
        self.identity = identity
        self.local = local
        self.tracker = tracker
        self.ptp = ptp
        self.inbound_tokens = inbound_tokens
        self.verifier = verifier
        self.on_token = on_token
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._ctx: ssl.SSLContext | None = None
        self._ctx_version = -1
        self.refused_tls = 0  # connections refused at the TLS layer (tests and metrics)

    def context(self) -> ssl.SSLContext:
        """The server context for the current pin set (rebuilt when the pins change)."""
        if self._ctx is None or self._ctx_version != self.table.pins_version:
            self._ctx = server_context(
                self.identity, self.table.pinned_pems(), allow_anonymous=bool(self.table.token_sources())
            )
            self._ctx_version = self.table.pins_version
        return self._ctx

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        stream = Stream(reader, writer, f"{address}")
        try:
            await writer.start_tls(self.context(), ssl_handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.refused_tls += 1
            log.info(
                "public port: refused %s at the TLS layer: %s", address, getattr(exc, "reason", None) or exc
            )
            stream.abort()
            return
        tune(writer)
        fp = peer_fingerprint(writer)
        source = self.table.identify(fp)
        anonymous = fp is None and bool(self.table.token_sources())
        if source is None and not anonymous:
            self.refused_tls += 1
            log.info("public port: refused %s: its certificate is not pinned for any domain", address)
            stream.abort()
            return
        stream.label = source or f"{address} (token)"
        with self.tracker.track(stream, domains=[source] if source else []):
            try:
                await self._serve(stream, source, fp or "")
            finally:
                await stream.close()

    async def _serve(self, stream: Stream, source: str | None, fp: str) -> None:
        """Requests of one connection; `source` is None on a certificate-less (token) connection."""
        while True:
            try:
                raw = await bounded(stream.read_head(MAX_HEAD_BYTES), self.idle_timeout)
                if raw is None:
                    return
                if source is not None and self.table.identify(fp) != source:
                    log.info("public port: %s's certificate is no longer pinned; closing", source)
                    return
                req = parse_request_head(raw)
            except GatewayError as exc:
                stream.write(exc.response(self.me))
                return
            except (OSError, StreamClosed, TimeoutError):
                return
            who = source
            try:
                if source is None:
                    who = await self._authenticate(stream, req)
                keep = await self._dispatch(stream, req, who, fp if source else "")
            except GatewayError as exc:
                log.info(
                    "public port: refused %s %s from %s: %s", req.method.decode(), req.host.decode(), who, exc
                )
                keep = await send_refusal(stream, req, exc, self.me)
            except (OSError, StreamClosed):
                return
            if not keep:
                return

    async def _authenticate(self, stream: Stream, req: RequestHead) -> str | None:
        """The source of a request on a certificate-less connection, from its token signature.

        Only a token handshake (whose RSA signature authenticates it) may come unsigned.  A signed body
        digest is checked here, before anything is forwarded; the body is then put back for forwarding.
        """
        index = req.headers.index
        if not any(name in index for name in AUTH_HEADERS):
            try:
                service, _ = parse_service_host(req.host)
            except GatewayError:
                service = ""
            if service == "handshake":
                return None
        if any(len(index.get(name, [])) > 1 for name in AUTH_HEADERS):
            raise Unauthenticated("repeated authentication header")
        source, digest = self.verifier.verify(
            req.headers.first_values(), req.method, strip_prefix(req), req.host, self._tokens_of
        )
        small = req.framing is Framing.NONE or (
            req.framing is Framing.LENGTH and req.length <= SIGNED_BODY_LIMIT
        )
        if digest == UNSIGNED:
            if small:
                raise Unauthenticated("a request body this small must be signed (X-Accord-Content-SHA256)")
            return source
        if not small:
            raise Unauthenticated("a signed body digest needs a Content-Length body")
        body = await stream.read_exact(req.length) if req.framing is Framing.LENGTH else b""
        if body_digest(body) != digest:
            raise Unauthenticated("the body does not match its signed digest")
        stream.buf[0:0] = body
        return source

    def _tokens_of(self, source: str) -> list[tuple[int, bytes]]:
        if source not in self.table.token_sources():
            return []
        return self.inbound_tokens.tokens(self.table.inbound_route(source), source)

    async def _dispatch(self, stream: Stream, req: RequestHead, source: str | None, fp: str) -> bool:
        if req.method == b"CONNECT":
            raise BadRequest("CONNECT is served on the egress port only; peers use Upgrade: accord-tunnel")
        service, domain = parse_service_host(req.host)
        if domain != self.me:
            raise Misdirected(f"this is the gateway of {self.me}; Host {req.host.decode()!r} names {domain}")
        if req.framing is Framing.CHUNKED and stream.buf:
            check_buffered_chunks(stream.buf)
        if service == "handshake":
            return await self._handshake(stream, req, source, fp)
        if source is None:
            raise Unauthenticated(
                "only a token handshake may come without a certificate or a token signature"
            )
        if service == "transit" and not fp:
            raise NotAllowed(
                "transit needs mutual TLS end to end; token-authenticated requests cannot use it"
            )
        if service == "transit":
            await self._transit(stream, req, source)
            return False
        if service == "transport":
            try:
                return await self.ptp.handle_peer(stream, req, source)
            except PtpError as exc:
                log.info("public port: PTP push from %s refused: %s %s", source, exc.code, exc.message)
                return await send_ptp_refusal(stream, req, exc)
        if service == "gateway":
            raise NotAllowed("the gateway host serves nothing to peers")
        if req.upgrade is not None and req.upgrade.lower() == TUNNEL_PROTOCOL:
            await self.local.tunnel(stream, req, source, service)
            return False
        return await self.local.forward(stream, req, source, service)

    async def _handshake(self, stream: Stream, req: RequestHead, source: str | None, fp: str) -> bool:
        target = strip_prefix(req)
        if req.method != b"POST" or target.split(b"?")[0] != handshake.HANDSHAKE_PATH:
            raise BadRequest("the handshake host answers POST /handshake only")
        if req.framing is not Framing.LENGTH or req.length > handshake.MAX_HANDSHAKE_BYTES:
            raise BadRequest("a handshake request needs a Content-Length body of at most 16 KiB")
        body = await bounded(stream.read_exact(req.length), self.idle_timeout)
        if handshake.request_mode(body) == "token":
            answer, peer, revision, token = handshake.answer_token(
                self.me, self.identity.key_pem, self.table, self.verifier, body
            )
            await self.on_token(peer, revision, token)
            log.info("token handshake from %s: revision %d agreed", peer, revision)
        elif source is None:
            raise Unauthenticated("sign the handshake with the route token, or present a pinned certificate")
        else:
            answer = handshake.answer(self.me, source, fp, body)
        reply = json.dumps(answer).encode()
        stream.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(reply), b"" if req.keep_alive else b"Connection: close\r\n")
            + reply
        )
        await stream.drain()
        log.debug("handshake from %s answered", source)
        return req.keep_alive

    async def _transit(self, stream: Stream, req: RequestHead, source: str) -> None:
        if req.upgrade is None or req.upgrade.lower() != TRANSIT_PROTOCOL or req.has_body:
            raise BadRequest("the transit host expects a body-less 'Upgrade: accord-transit' request")
        destination = (req.headers.get(TRANSIT_TO_HEADER.lower()) or b"").decode("ascii", "replace")
        if not DNS_LABEL.match(destination):
            raise BadRequest(f"{TRANSIT_TO_HEADER.decode()} must name a domain")
        if destination in (self.me, source):
            raise Misdirected(f"transit from {source} to {destination} through {self.me} makes no sense")
        if self.table.peer(destination) is None:
            raise NotAllowed(f"{self.me} does not know domain {destination} and will not relay to it")
        hop = self.table.hop(destination)
        where = f"{destination} at {hop.host}:{hop.port}"
        try:
            reader, writer = await bounded(
                asyncio.open_connection(hop.host, hop.port, limit=STREAM_LIMIT), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"transit {self.me} cannot reach {where}: {exc or 'timeout'}") from exc
        onward = Stream(reader, writer, destination)
        stream.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: "
            + TRANSIT_PROTOCOL
            + b"\r\n\r\n"
        )
        started = time.monotonic()
        transit_log.info("transit %s -> %s: opened", source, destination)
        up = down = 0
        try:
            with self.tracker.track(stream, onward, domains=[source, destination]):
                up, down = await splice(stream, onward)
        finally:
            transit_log.info(
                "transit %s -> %s: closed after %.1f s, %d bytes up, %d bytes down",
                source,
                destination,
                time.monotonic() - started,
                up,
                down,
            )
