"""Gateway: one node's public mTLS port and loopback egress port, wired to its store and registry.

The node runs `await gateway.run()` in its TaskGroup.  `run()` first loads the routing table from the
store (peers and routes; see `table.py`) and only then opens the ports, so the very first connection is
judged against the real pins; `ready` is set once both ports listen, and `public_port` / `egress_port`
then hold the bound ports (settings may say 0 = pick a free one, which tests use).

Reactions to change, all immediate:
- a peer's Domain deleted or its certificate replaced -> every connection with that peer is aborted
  (inbound, pooled outbound, in-flight, transit through us) and the next TLS handshake uses the new pin
  set;
- a route changed or deleted -> idle pooled links to that destination are closed, so the next request
  follows the new route (or is refused as unknown);
- a service unregistered (its task stopped) -> tunnels and exchanges with it are aborted and its pooled
  connections closed.

Shutdown (the task is cancelled): both listeners close at once, connection handlers are cancelled and
awaited for at most `shutdown_grace` seconds, pooled links are closed, and the store watch stops.  Engines
see their connections end; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from accord.errors import Conflict, NotFound
from accord.gateway.egress import EgressPort
from accord.gateway.links import LinkPool, PeerConnector
from accord.gateway.local import LocalServices
from accord.gateway.ptp import PtpHub, PtpTransport
from accord.gateway.public import PublicPort
from accord.gateway.registry import ServiceEntry, ServiceRegistry
from accord.gateway.stream import STREAM_LIMIT
from accord.gateway.table import Changes, RoutingTable
from accord.gateway.tls import Identity
from accord.gateway.tokens import TokenBook, TokenVerifier, merged, seal
from accord.gateway.tracking import ConnectionTracker
from accord.resources.domain import DomainRoute
from accord.resources.meta import utcnow
from accord.resources.phases import RoutePhase
from accord.settings import NodeSettings
from accord.store.base import Store

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class GatewayConfig:
    """Timeouts and pool sizes (seconds unless noted); the defaults follow Kuscia's gateway."""

    connect_timeout: float = 10.0
    """TCP connect to a peer, a transit hop or a local engine."""
    tls_handshake_timeout: float = 10.0
    public_idle_timeout: float = 120.0
    """A peer's keep-alive connection may idle this long; longer than `pool_idle_timeout` on purpose."""
    egress_idle_timeout: float = 600.0
    """An engine's keep-alive connection to the egress port may idle this long."""
    pool_idle_timeout: float = 50.0
    pool_max_idle: int = 32
    """Idle links kept per peer (and per local engine port)."""
    shutdown_grace: float = 5.0
    housekeeping_interval: float = 10.0
    ptp_session_limit: int = 64 << 20
    """Bytes of queued PTP messages one session may hold before pushes wait / get QueueFull."""
    ptp_total_limit: int = 512 << 20
    """Bytes of queued PTP messages all sessions together may hold."""
    ptp_max_message: int = 16 << 20
    token_window: float = 120.0
    """Token-signed requests must carry a timestamp this close to now (and a nonce used once)."""


class Gateway:
    """See the module docstring."""

    def __init__(
        self,
        settings: NodeSettings,
        store: Store,
        registry: ServiceRegistry,
        *,
        key_pem: bytes,
        cert_pem: bytes,
        config: GatewayConfig | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.config = config or GatewayConfig()
        cfg = self.config
        registry.bind_domain(settings.domain)
        self.identity = Identity(key_pem, cert_pem)
        self.table = RoutingTable(settings.domain)
        self.tracker = ConnectionTracker()
        self.peer_pool = LinkPool(max_idle_per_key=cfg.pool_max_idle, idle_timeout=cfg.pool_idle_timeout)
        self.local_pool = LinkPool(max_idle_per_key=cfg.pool_max_idle, idle_timeout=cfg.pool_idle_timeout)
        self.connector = PeerConnector(
            self.table,
            self.identity,
            connect_timeout=cfg.connect_timeout,
            handshake_timeout=cfg.tls_handshake_timeout,
        )
        self.ptp = PtpTransport(
            settings.domain,
            registry,
            PtpHub(
                session_limit=cfg.ptp_session_limit,
                total_limit=cfg.ptp_total_limit,
                max_message=cfg.ptp_max_message,
            ),
        )
        self.local = LocalServices(
            registry, self.local_pool, self.tracker, connect_timeout=cfg.connect_timeout
        )
        self.inbound_tokens = TokenBook(key_pem)
        self.outbound_tokens = TokenBook(key_pem)
        self.public = PublicPort(
            self.table,
            self.identity,
            self.local,
            self.tracker,
            self.ptp,
            inbound_tokens=self.inbound_tokens,
            verifier=TokenVerifier(window=cfg.token_window),
            on_token=self._record_inbound_token,
            handshake_timeout=cfg.tls_handshake_timeout,
            idle_timeout=cfg.public_idle_timeout,
            connect_timeout=cfg.connect_timeout,
        )
        # What the node's own PeerClient presents on the egress port for `accord.<peer>.svc` (see egress.py).
        self.node_secret = secrets.token_urlsafe(32)
        self.egress = EgressPort(
            self.connector,
            self.peer_pool,
            self.local,
            self.tracker,
            self.ptp,
            tokens=self.outbound_tokens,
            idle_timeout=cfg.egress_idle_timeout,
            node_secret=self.node_secret.encode(),
        )
        self.ready = asyncio.Event()
        self.public_port = settings.gateway_port
        self.egress_port = settings.egress_port
        self._handlers: set[asyncio.Task[object]] = set()
        self.table.subscribe(self._on_table_change)
        self._unsubscribe = registry.subscribe(self._on_service_removed)

    @property
    def domain(self) -> str:
        return self.settings.domain

    async def run(self) -> None:
        """Serve both ports until cancelled; see the module docstring."""
        cfg = self.config
        follow = asyncio.create_task(self.table.follow(self.store), name=f"gateway-{self.domain}-table")
        servers: list[asyncio.Server] = []
        try:
            await self.table.loaded.wait()
            public = await asyncio.start_server(
                self._wrap(self.public.handle),
                self.settings.gateway_host,
                self.settings.gateway_port,
                limit=STREAM_LIMIT,
                reuse_address=True,
            )
            servers.append(public)
            egress = await asyncio.start_server(
                self._wrap(self.egress.handle),
                "127.0.0.1",
                self.settings.egress_port,
                limit=STREAM_LIMIT,
                reuse_address=True,
            )
            servers.append(egress)
            self.public_port = int(public.sockets[0].getsockname()[1])
            self.egress_port = int(egress.sockets[0].getsockname()[1])
            self.ready.set()
            log.info(
                "gateway of %s: public port %s:%d (mTLS), egress port 127.0.0.1:%d",
                self.domain,
                self.settings.gateway_host,
                self.public_port,
                self.egress_port,
            )
            while True:
                await asyncio.sleep(cfg.housekeeping_interval)
                self.peer_pool.expire()
                self.local_pool.expire()
        finally:
            self.ready.clear()
            for server in servers:
                server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=cfg.shutdown_grace)
            self.tracker.abort_all()
            self.peer_pool.close_all()
            self.local_pool.close_all()
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            log.info("gateway of %s stopped", self.domain)

    def _wrap(self, handler: Handler) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                writer.transport.abort()  # shutting down: end the connection, do not re-raise into asyncio
            except Exception:
                log.exception("gateway connection handler failed")
                writer.transport.abort()
            finally:
                if task is not None:
                    self._handlers.discard(task)

        return serve

    async def _record_inbound_token(self, source: str, revision: int, token: bytes) -> None:
        """Keep a token agreed with `source` (usable at once) and store it, sealed, in the inbound route."""
        self.inbound_tokens.remember(source, revision, token)
        for _ in range(5):
            route = self.table.inbound_route(source)
            if route is None:
                return
            try:
                current = await self.store.get(DomainRoute.KIND, route.meta.name)
            except NotFound:
                return
            assert isinstance(current, DomainRoute)
            ttl = float(current.spec.token_rotation_seconds or 86400 * 365)
            now = utcnow()
            status = current.status.model_copy(
                update={
                    "tokens": merged(
                        current.status.tokens, revision, seal(self.identity.cert_pem, token), ttl
                    ),
                    "phase": RoutePhase.READY,
                    "reason": f"token agreed with {source} (revision {revision})",
                    "last_probe_at": now,
                    "last_ready_at": now,
                }
            )
            try:
                await self.store.update(current.model_copy(update={"status": status}))
                return
            except Conflict:
                continue
        log.warning("could not store token revision %d of %s (concurrent updates)", revision, source)

    def _on_table_change(self, changes: Changes) -> None:
        for domain in changes.pins:
            aborted = self.tracker.revoke_domain(domain)
            self.peer_pool.discard(domain)
            if aborted:
                log.info("pin of %s changed: %d open connection(s) closed", domain, aborted)
        for destination in changes.routes:
            self.peer_pool.discard(destination)

    def _on_service_removed(self, entry: ServiceEntry) -> None:
        aborted = self.tracker.revoke_service(entry.name)
        self.local_pool.discard(("local", entry.port))
        if aborted:
            log.info("service %s removed: %d open connection(s) closed", entry.name, aborted)
