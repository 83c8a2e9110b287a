"""Delivering to local services: the last hop, from a gateway port to an engine on 127.0.0.1.

Both ports end here: the public port for a peer's request (source = the peer's TLS identity) and the
egress port for an engine calling a service of its own node (source = this domain).  The registry has
already said the source may reach the service; this module adds what the engine must know and nothing
it must not trust:

- `X-Accord-Source-Domain: <source>` is set from the authenticated identity, after removing any copy
  the request carried (a peer cannot claim to be someone else by header);
- `X-Accord-Path-Prefix` (how the sending gateway marked a route's path prefix) is consumed: if the
  target still starts with it (no institutional L7 gateway stripped it on the way), it is stripped here,
  so engines see the same paths with or without a prefix-routing gateway in between.

Plain HTTP exchanges reuse pooled connections to the engine (keyed by port); `Upgrade: accord-tunnel`
turns the connection into a byte tunnel to the engine's port (what CONNECT on a peer's egress port
becomes).
"""

from __future__ import annotations

import asyncio

from accord.gateway.forward import forward_pooled, request_head_bytes, splice
from accord.gateway.http1 import RequestHead
from accord.gateway.links import LinkPool
from accord.gateway.refusals import BadRequest, ServiceUnavailable
from accord.gateway.registry import ServiceEntry, ServiceRegistry
from accord.gateway.stream import STREAM_LIMIT, Stream, bounded
from accord.gateway.tokens import AUTH_HEADERS
from accord.gateway.tracking import ConnectionTracker

SOURCE_HEADER = b"X-Accord-Source-Domain"
PREFIX_HEADER = b"X-Accord-Path-Prefix"
TUNNEL_PROTOCOL = b"accord-tunnel"
DROP_INBOUND = frozenset({SOURCE_HEADER.lower(), PREFIX_HEADER.lower()}) | AUTH_HEADERS


def strip_prefix(req: RequestHead) -> bytes:
    prefix = req.headers.get(PREFIX_HEADER.lower())
    target = req.target
    if prefix and prefix.startswith(b"/") and target.startswith(prefix):
        rest = target[len(prefix) :]
        if not rest or rest[:1] in (b"/", b"?"):
            target = rest if rest.startswith(b"/") else b"/" + rest
    return target


class LocalServices:
    def __init__(
        self,
        registry: ServiceRegistry,
        pool: LinkPool,
        tracker: ConnectionTracker,
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.tracker = tracker
        self.connect_timeout = connect_timeout

    async def connect(self, entry: ServiceEntry) -> Stream:
        try:
            reader, writer = await bounded(
                asyncio.open_connection(entry.host, entry.port, limit=STREAM_LIMIT), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise ServiceUnavailable(
                f"service {entry.name!r} is registered on port {entry.port} but its engine does not accept "
                f"connections ({exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timeout'})"
            ) from exc
        return Stream(reader, writer, f"service {entry.name}")

    async def forward(self, client: Stream, req: RequestHead, source: str, service: str) -> bool:
        """One HTTP exchange with a local service; returns whether the client connection stays open."""
        entry = self.registry.resolve(service, source)
        head = request_head_bytes(
            req, target=strip_prefix(req), drop=DROP_INBOUND, extra=[(SOURCE_HEADER, source.encode())]
        )
        return await forward_pooled(
            client,
            req,
            head,
            self.pool,
            ("local", entry.port),
            lambda: self.connect(entry),
            tracker=self.tracker,
            services=[entry.name],
        )

    async def tunnel(self, client: Stream, req: RequestHead, source: str, service: str) -> None:
        """`Upgrade: accord-tunnel` from a peer: answer 101 and splice to the engine's port."""
        entry = self.registry.resolve(service, source)
        if req.has_body:
            raise BadRequest("a tunnel request must not have a body")
        link = await self.connect(entry)
        client.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: "
            + TUNNEL_PROTOCOL
            + b"\r\n\r\n"
        )
        with self.tracker.track(link, services=[entry.name], domains=[source]):
            await splice(client, link)

    async def connect_raw(self, client: Stream, source: str, service: str) -> None:
        """CONNECT on the egress port to a service of our own domain: 200 and splice."""
        entry = self.registry.resolve(service, source)
        link = await self.connect(entry)
        client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        with self.tracker.track(link, services=[entry.name]):
            await splice(client, link)
