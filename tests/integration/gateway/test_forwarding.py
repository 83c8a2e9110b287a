"""Engine traffic: egress port -> peer's public port -> peer's registered service, streamed both ways."""

from __future__ import annotations

import asyncio
import hashlib

import h11
import httpx

from accord.gateway import ANY_PEER
from tests.integration.gateway.engines import EchoEngine, pattern_bytes
from tests.integration.gateway.harness import mesh, raw_exchange

MiB = 1024 * 1024


async def _pair(nodes, echo: EchoEngine, *, allowed: set[str] | None = None):
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint)
    bob.registry.register("echo", echo.port, allowed=allowed or {"alice"}, task="t1")
    return alice, bob


async def test_request_reaches_peer_service_with_authenticated_source(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    async with httpx.AsyncClient(base_url=alice.egress, timeout=20) as client:
        r = await client.post(
            "/info?x=1",
            headers={"Host": "echo.bob.svc", "X-Accord-Source-Domain": "mallory"},
            content=b"hello",
        )
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["headers"]["x-accord-source-domain"] == "alice"  # from TLS, the forged header is gone
    assert info["target"] == "/info?x=1"
    assert info["headers"]["host"] == "echo.bob.svc"
    assert info["bytes"] == 5


async def test_keep_alive_requests_share_one_pooled_link(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    async with httpx.AsyncClient(base_url=alice.egress, timeout=20) as client:
        for i in range(20):
            r = await client.get(f"/info?i={i}", headers={"Host": "echo.bob.svc"})
            assert r.status_code == 200
    assert alice.gateway.peer_pool.opened == 1
    assert alice.gateway.peer_pool.reused == 19
    assert len(echo.requests) == 20


async def test_large_bodies_stream_both_ways(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    size = 64 * MiB
    async with httpx.AsyncClient(base_url=alice.egress, timeout=60) as client:
        # upload with Content-Length
        body = pattern_bytes(size)
        r = await client.post("/sink", headers={"Host": "echo.bob.svc"}, content=body)
        assert r.json()["bytes"] == size
        assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
        # download with Content-Length, streamed
        digest, got = hashlib.sha256(), 0
        async with client.stream("GET", f"/source?n={size}", headers={"Host": "echo.bob.svc"}) as resp:
            assert resp.headers["content-length"] == str(size)
            async for chunk in resp.aiter_raw():
                digest.update(chunk)
                got += len(chunk)
        assert got == size
        assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()


async def test_chunked_full_duplex_echo(nodes, echo) -> None:
    """A chunked upload echoed back while it is still being sent: both directions stream at once.

    The client sends the first chunk and waits for its echo before sending the rest, which only works
    if no hop buffers the request body (or the response) whole.
    """
    alice, _bob = await _pair(nodes, echo)
    pieces = [bytes([65 + i % 26]) * (100_000 + i) for i in range(40)]
    reader, writer = await asyncio.open_connection("127.0.0.1", alice.gateway.egress_port)
    conn = h11.Connection(h11.CLIENT)
    try:
        writer.write(
            conn.send(
                h11.Request(
                    method="POST",
                    target="/echo",
                    headers=[("Host", "echo.bob.svc"), ("Transfer-Encoding", "chunked")],
                )
            )
        )
        received = bytearray()

        async def read_until(n: int) -> None:
            while len(received) < n:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(65536), 10))
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                elif isinstance(event, h11.Data):
                    received.extend(event.data)
                else:
                    raise AssertionError(f"unexpected {event!r}")

        writer.write(conn.send(h11.Data(data=pieces[0])))
        await read_until(len(pieces[0]))  # the echo of the first piece, while the request is still open
        for piece in pieces[1:]:
            writer.write(conn.send(h11.Data(data=piece)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await read_until(sum(map(len, pieces)))
    finally:
        writer.close()
    assert bytes(received) == b"".join(pieces)
    assert echo.requests[-1].headers.get("transfer-encoding") == "chunked"


async def test_long_lived_response_streams_as_it_is_produced(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    async with httpx.AsyncClient(base_url=alice.egress, timeout=30) as client:
        lines = []
        async with client.stream("GET", "/stream?n=5&interval=0.05", headers={"Host": "echo.bob.svc"}) as r:
            async for line in r.aiter_lines():
                lines.append(line)
    assert lines == [f"tick {i}" for i in range(5)]


async def test_concurrent_requests_from_many_engines(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo, allowed={ANY_PEER})
    async with httpx.AsyncClient(base_url=alice.egress, timeout=30) as client:

        async def one(i: int) -> int:
            r = await client.post(f"/sink?i={i}", headers={"Host": "echo.bob.svc"}, content=b"x" * (i * 1000))
            return int(r.json()["bytes"])

        sizes = await asyncio.gather(*(one(i) for i in range(100)))
    assert sizes == [i * 1000 for i in range(100)]


async def test_own_domain_services_are_reachable_through_egress(nodes, echo) -> None:
    alice = await nodes("alice")
    alice.registry.register("echo", echo.port, allowed=set())
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.get("/info", headers={"Host": "echo.alice.svc"})
    assert r.status_code == 200
    assert r.json()["headers"]["x-accord-source-domain"] == "alice"


async def test_path_prefix_is_applied_and_stripped(nodes, echo) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint, path_prefix="/gw/bob")
    bob.registry.register("echo", echo.port, allowed={"alice"})
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.get("/info?q=1", headers={"Host": "echo.bob.svc"})
    assert r.status_code == 200, r.text
    # no L7 gateway stripped the prefix on the way, so bob's gateway did: the engine sees its own path
    assert r.json()["target"] == "/info?q=1"


async def test_unknown_route_and_service_and_policy_refusals(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo, allowed={"carol"})
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.get("/", headers={"Host": "echo.zed.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (404, "unknown-route")
        assert r.headers["x-accord-refused-by"] == "alice"
        r = await client.get("/", headers={"Host": "nothing.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (404, "unknown-service")
        assert r.headers["x-accord-refused-by"] == "bob"
        r = await client.get("/", headers={"Host": "echo.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (403, "not-allowed")
        assert "alice" in r.headers["x-accord-error-message"]
        r = await client.get("/", headers={"Host": "handshake.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (403, "not-allowed")
        r = await client.get("/", headers={"Host": "not-a-service-host"})
        assert (r.status_code, r.headers["x-accord-error"]) == (400, "bad-request")
    assert echo.requests == []


async def test_registered_service_with_no_engine_is_service_unavailable(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    await echo.stop()
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.get("/", headers={"Host": "echo.bob.svc"})
    assert (r.status_code, r.headers["x-accord-error"]) == (503, "service-unavailable")


async def test_unregistered_service_is_refused_from_then_on(nodes, echo) -> None:
    alice, bob = await _pair(nodes, echo)
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        assert (await client.get("/info", headers={"Host": "echo.bob.svc"})).status_code == 200
        bob.registry.unregister_task("t1")
        r = await client.get("/info", headers={"Host": "echo.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (404, "unknown-service")


async def test_peer_unreachable(nodes, echo) -> None:
    alice, bob = await _pair(nodes, echo)
    await bob.stop()
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.get("/", headers={"Host": "echo.bob.svc"})
    assert (r.status_code, r.headers["x-accord-error"]) == (502, "peer-unreachable")
    assert "cannot connect to bob" in r.headers["x-accord-error-message"]


async def test_pipelined_requests_are_answered_in_order(nodes, echo) -> None:
    alice, _bob = await _pair(nodes, echo)
    one = b"GET /info?n=%d HTTP/1.1\r\nHost: echo.bob.svc\r\n\r\n"
    data = one % 1 + one % 2 + (one % 3).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    out = await raw_exchange("127.0.0.1", alice.gateway.egress_port, data)
    assert out.count(b"HTTP/1.1 200") == 3
    assert [r.target for r in echo.requests] == ["/info?n=1", "/info?n=2", "/info?n=3"]
