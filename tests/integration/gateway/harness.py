"""Real gateways on loopback for tests: one MemoryStore, registry and Gateway per domain, free ports.

Identities are generated once per test session (RSA-2048 generation is the slow part) and cached by
name; `fresh_identity()` makes a new one (a replaced certificate, a stranger).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accord.controllers.manager import ControllerManager
from accord.controllers.route import RouteController
from accord.gateway import Gateway, GatewayConfig, ServiceRegistry
from accord.gateway.tls import Identity, client_context
from accord.kms.identity import generate_identity
from accord.resources.domain import Domain, DomainRoute
from accord.resources.phases import RoutePhase
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore


@functools.cache
def identity(name: str) -> tuple[bytes, bytes]:
    return generate_identity(name)


def fresh_identity(name: str) -> tuple[bytes, bytes]:
    return generate_identity(name)


async def wait_for(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]], *, timeout: float = 15.0, what: str = ""
) -> Any:
    """Poll until `condition()` is truthy (bounded); fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        last = value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition} (last: {last!r})")


@dataclass
class GatewayNode:
    name: str
    key: bytes
    cert: bytes
    store: MemoryStore
    registry: ServiceRegistry
    gateway: Gateway
    settings: NodeSettings
    task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.gateway.public_port}"

    @property
    def egress(self) -> str:
        return f"http://127.0.0.1:{self.gateway.egress_port}"

    async def start(self) -> GatewayNode:
        self.task = asyncio.create_task(self.gateway.run(), name=f"gateway-{self.name}")
        ready = asyncio.create_task(self.gateway.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self.task.done():
                self.task.result()
            raise AssertionError(f"gateway {self.name} did not become ready")
        return self

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None

    async def restart(self, *, key_cert: tuple[bytes, bytes] | None = None) -> None:
        """Stop, then start a new Gateway on the same ports and store (optionally a new identity)."""
        await self.stop()
        if key_cert is not None:
            self.key, self.cert = key_cert
        self.settings = self.settings.model_copy(
            update={"gateway_port": self.gateway.public_port, "egress_port": self.gateway.egress_port}
        )
        self.gateway = Gateway(
            self.settings,
            self.store,
            self.registry,
            key_pem=self.key,
            cert_pem=self.cert,
            config=self.gateway.config,
        )
        await self.start()

    async def pin(self, peer: str, cert: bytes) -> None:
        """Create or replace the partner Domain `peer` with certificate `cert`."""
        try:
            current = await self.store.get("Domain", peer)
        except Exception:
            await self.store.create(
                Domain.model_validate(
                    {"meta": {"name": peer}, "spec": {"role": "partner", "cert": cert.decode()}}
                )
            )
        else:
            assert isinstance(current, Domain)
            spec = current.spec.model_copy(update={"cert": cert.decode()})
            await self.store.update(current.model_copy(update={"spec": spec}))
        await wait_for(
            lambda: (p := self.gateway.table.peer(peer)) is not None and p.cert_pem == cert.decode(),
            what=f"{self.name} to pin {peer}",
        )

    async def unpin(self, peer: str) -> None:
        await self.store.delete("Domain", peer)
        await wait_for(lambda: self.gateway.table.peer(peer) is None, what=f"{self.name} to unpin {peer}")

    async def route(
        self,
        to: str,
        endpoint: str,
        *,
        via: str = "",
        path_prefix: str = "",
        name: str = "",
        auth: str = "MTLS",
        rotation: int = 0,
    ) -> DomainRoute:
        route = await self.store.create(
            DomainRoute.model_validate(
                {
                    "meta": {"name": name or f"{self.name}-{to}"},
                    "spec": {
                        "source": self.name,
                        "destination": to,
                        "endpoint": endpoint,
                        "transit": via,
                        "path_prefix": path_prefix,
                        "authentication_type": auth,
                        "token_rotation_seconds": rotation,
                    },
                }
            )
        )
        await wait_for(lambda: self.gateway.table.route(to) is not None, what=f"{self.name} route to {to}")
        return route

    async def accept_tokens_from(self, source: str) -> DomainRoute:
        """The inbound route `source -> me` with authentication Token (Kuscia's route on both sides)."""
        route = await self.store.create(
            DomainRoute.model_validate(
                {
                    "meta": {"name": f"{source}-{self.name}"},
                    "spec": {"source": source, "destination": self.name, "authentication_type": "Token"},
                }
            )
        )
        await wait_for(lambda: source in self.gateway.table.token_sources(), what=f"{self.name} token grant")
        return route

    async def unroute(self, to: str, name: str = "") -> None:
        await self.store.delete("DomainRoute", name or f"{self.name}-{to}")
        await wait_for(lambda: self.gateway.table.route(to) is None, what=f"{self.name} route to {to} gone")

    def tls_client_context(self) -> ssl.SSLContext:
        """A client context with this node's identity (to talk to a public port by hand)."""
        return client_context(Identity(self.key, self.cert))


class Probing:
    """A RouteController for `node`, run by a ControllerManager until the test ends."""

    def __init__(self, node: GatewayNode) -> None:
        self.node = node
        self.controller = RouteController(
            node.store,
            node.settings,
            key_pem=node.key,
            cert_pem=node.cert,
            probe_interval=0.1,
            probe_timeout=5,
        )
        self.manager = ControllerManager(node.store, [self.controller], node.settings, resync_seconds=0)
        self.task = asyncio.create_task(self.manager.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def status(self, route: str) -> tuple[RoutePhase, str]:
        obj = await self.node.store.get("DomainRoute", route)
        assert isinstance(obj, DomainRoute)
        return obj.status.phase, obj.status.reason

    async def wait_phase(self, route: str, phase: RoutePhase, contains: str = "") -> str:
        async def reached() -> str | None:
            current, reason = await self.status(route)
            return reason if current is phase and contains in reason else None

        return str(await wait_for(reached, timeout=20, what=f"route {route} to become {phase} ({contains})"))


def make_node(
    name: str, base: Path, *, key_cert: tuple[bytes, bytes] | None = None, config: GatewayConfig | None = None
) -> GatewayNode:
    key, cert = key_cert or identity(name)
    directory = base / name
    directory.mkdir(parents=True, exist_ok=True)
    settings = NodeSettings(domain=name, dir=directory, gateway_port=0, egress_port=0)
    store = MemoryStore()
    registry = ServiceRegistry()
    gateway = Gateway(settings, store, registry, key_pem=key, cert_pem=cert, config=config)
    return GatewayNode(name, key, cert, store, registry, gateway, settings)


async def mesh(*nodes: GatewayNode) -> None:
    """Pin every node in every other one (the out-of-band certificate exchange)."""
    for a in nodes:
        for b in nodes:
            if a is not b:
                await a.pin(b.name, b.cert)


async def raw_exchange(host: str, port: int, data: bytes, *, ssl_ctx: ssl.SSLContext | None = None) -> bytes:
    """Send raw bytes, read until the other side closes (bounded), return what came back."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl_ctx), 10)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
