"""CONNECT tunnels on the egress port, and transit: alice -> carol -> bob with carol unable to read."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import pytest

from tests.integration.gateway.engines import EchoEngine, TcpEcho
from tests.integration.gateway.harness import GatewayNode, mesh, raw_exchange

MiB = 1024 * 1024


async def _connect(port: int, authority: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, head


async def _roundtrips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for size in (1, 1000, 64 * 1024, 4 * MiB):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        assert got == payload


async def test_connect_tunnel_to_a_peer_service(nodes, tcp_echo: TcpEcho) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint)
    bob.registry.register("brpc", tcp_echo.port, allowed={"alice"}, task="t1")
    reader, writer, head = await _connect(alice.gateway.egress_port, b"brpc.bob.svc:9000")
    try:
        assert head.startswith(b"HTTP/1.1 200")
        await _roundtrips(reader, writer)
    finally:
        writer.close()
    assert tcp_echo.connections == 1


async def test_connect_tunnel_is_refused_for_unknown_or_forbidden_services(nodes, tcp_echo: TcpEcho) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint)
    bob.registry.register("brpc", tcp_echo.port, allowed={"carol"})
    for authority, status, reason in [
        (b"nothing.bob.svc:1", b"404", b"unknown-service"),
        (b"brpc.bob.svc:1", b"403", b"not-allowed"),
        (b"brpc.zed.svc:1", b"404", b"unknown-route"),
    ]:
        _reader, writer, head = await _connect(alice.gateway.egress_port, authority)
        writer.close()
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert b"X-Accord-Error: " + reason in head
    assert tcp_echo.connections == 0


async def test_tunnel_closes_when_its_task_unregisters(nodes, tcp_echo: TcpEcho) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint)
    bob.registry.register("brpc", tcp_echo.port, allowed={"alice"}, task="t1")
    reader, writer, head = await _connect(alice.gateway.egress_port, b"brpc.bob.svc:9000")
    try:
        assert head.startswith(b"HTTP/1.1 200")
        bob.registry.unregister_task("t1")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the tunnel ends
    finally:
        writer.close()


class Sniffer:
    """A TCP relay that records every byte it forwards (to see what a transit hop passes on)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Sniffer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if record:
                        self.seen += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def triangle(nodes, echo: EchoEngine, tcp_echo: TcpEcho):
    """alice and bob both know each other and carol; alice reaches bob only through carol (sniffed)."""
    alice: GatewayNode = await nodes("alice")
    bob: GatewayNode = await nodes("bob")
    carol: GatewayNode = await nodes("carol")
    await mesh(alice, bob, carol)
    sniffer = await Sniffer(bob.gateway.public_port).start()
    await alice.route("carol", carol.endpoint)
    await alice.route("bob", "", via="carol")
    await carol.route("bob", f"https://127.0.0.1:{sniffer.port}")
    bob.registry.register("echo", echo.port, allowed={"alice"})
    bob.registry.register("brpc", tcp_echo.port, allowed={"alice"})
    yield alice, bob, carol, sniffer
    await sniffer.stop()


async def test_transit_carries_http_end_to_end_encrypted(triangle, echo: EchoEngine, caplog) -> None:
    alice, _bob, _carol, sniffer = triangle
    marker = b"the-secret-payload-" * 1000
    caplog.set_level(logging.INFO, logger="accord.gateway.transit")
    async with httpx.AsyncClient(base_url=alice.egress, timeout=20) as client:
        for _ in range(3):
            r = await client.post(
                "/info", headers={"Host": "echo.bob.svc", "X-Secret": "hush"}, content=marker
            )
            assert r.status_code == 200, r.text
            info = r.json()
            assert info["headers"]["x-accord-source-domain"] == "alice"  # bob authenticated alice herself
            assert info["bytes"] == len(marker)
    assert len(sniffer.seen) > 3 * len(marker)  # everything alice sent passed carol ...
    assert b"the-secret-payload" not in sniffer.seen  # ... as TLS records carol cannot read
    assert b"hush" not in sniffer.seen and b"echo.bob.svc" not in sniffer.seen
    await alice.stop()  # end the pooled transit link so carol logs its close
    await asyncio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "accord.gateway.transit"]
    assert any(line.startswith("transit alice -> bob: opened") for line in lines)
    closed = [line for line in lines if "closed after" in line]
    assert closed and "bytes up" in closed[0]
    assert all("secret" not in line for line in lines)  # metadata only


async def test_transit_carries_connect_tunnels(triangle, tcp_echo: TcpEcho) -> None:
    alice, _bob, _carol, _sniffer = triangle
    reader, writer, head = await _connect(alice.gateway.egress_port, b"brpc.bob.svc:1")
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        await _roundtrips(reader, writer)
    finally:
        writer.close()


async def test_transit_refuses_unknown_destination(triangle, echo: EchoEngine) -> None:
    alice, _bob, carol, _sniffer = triangle
    await carol.unpin("bob")
    async with httpx.AsyncClient(base_url=alice.egress, timeout=20) as client:
        r = await client.get("/info", headers={"Host": "echo.bob.svc"})
    assert (r.status_code, r.headers["x-accord-error"]) == (403, "not-allowed")
    assert "carol" in r.headers["x-accord-error-message"]
    assert echo.requests == []


async def test_transit_source_must_be_known_to_the_destination(triangle, echo: EchoEngine) -> None:
    alice, bob, _carol, _sniffer = triangle
    await bob.unpin("alice")
    async with httpx.AsyncClient(base_url=alice.egress, timeout=20) as client:
        r = await client.get("/info", headers={"Host": "echo.bob.svc"})
    assert (r.status_code, r.headers["x-accord-error"]) == (502, "peer-unauthorized")
    assert echo.requests == []


async def test_transit_hop_is_not_a_free_relay_for_strangers(triangle) -> None:
    """carol relays only for domains she pins: a request with bob's transit host from carol's own
    peer list works, but an engine may not address the transit host through its egress port."""
    alice, _bob, _carol, _sniffer = triangle
    out = await raw_exchange(
        "127.0.0.1",
        alice.gateway.egress_port,
        b"GET / HTTP/1.1\r\nHost: transit.carol.svc\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 403")
