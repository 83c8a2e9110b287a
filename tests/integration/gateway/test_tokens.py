"""Token authentication (for peers behind a TLS-terminating L7 gateway): handshake, signed requests,
rotation under traffic, replay and tampering refused."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from accord.gateway.tls import anonymous_client_context
from accord.gateway.tokens import body_digest, sign_request
from accord.resources.domain import DomainRoute
from accord.resources.phases import RoutePhase
from tests.integration.gateway.engines import EchoEngine
from tests.integration.gateway.harness import GatewayNode, Probing, identity, mesh, raw_exchange, wait_for


@pytest.fixture
async def probing() -> AsyncIterator[list[Probing]]:
    running: list[Probing] = []
    yield running
    for p in running:
        await p.stop()


async def _token_pair(nodes, probing, echo: EchoEngine, *, rotation: int = 0, both: bool = False):
    alice: GatewayNode = await nodes("alice")
    bob: GatewayNode = await nodes("bob")
    await mesh(alice, bob)
    pairs = [(alice, bob), (bob, alice)] if both else [(alice, bob)]
    for src, dst in pairs:
        await dst.accept_tokens_from(src.name)
        await src.route(dst.name, dst.endpoint, auth="Token", rotation=rotation)
        dst.registry.register("echo", echo.port, allowed={src.name})
        p = Probing(src)
        probing.append(p)
        await p.wait_phase(f"{src.name}-{dst.name}", RoutePhase.READY, "token")
    return alice, bob


async def _route(node: GatewayNode, name: str) -> DomainRoute:
    route = await node.store.get("DomainRoute", name)
    assert isinstance(route, DomainRoute)
    return route


async def test_token_route_handshake_and_signed_traffic(nodes, probing, echo) -> None:
    alice, bob = await _token_pair(nodes, probing, echo)
    outbound, inbound = await _route(alice, "alice-bob"), await _route(bob, "alice-bob")
    assert [t.revision for t in outbound.status.tokens] == [1] == [t.revision for t in inbound.status.tokens]
    for item in (outbound.status.tokens[0], inbound.status.tokens[0]):
        assert len(base64.b64decode(item.token)) == 256  # sealed to the node's RSA key, never stored clear
    assert outbound.status.tokens[0].token != inbound.status.tokens[0].token
    assert inbound.status.phase is RoutePhase.READY and "token agreed with alice" in inbound.status.reason
    await wait_for(
        lambda: alice.gateway.table.route("bob").status.tokens, what="alice's gateway to see the token"
    )
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        r = await client.post("/info", headers={"Host": "echo.bob.svc"}, content=b"payload")
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-accord-source-domain"] == "alice"
    assert not [h for h in seen if h.startswith("x-accord-") and h != "x-accord-source-domain"]
    assert bob.gateway.tracker.count("alice") == 0  # alice's link presents no certificate: token only


async def test_token_rotates_twice_in_both_directions_while_traffic_flows(nodes, probing, echo) -> None:
    alice, bob = await _token_pair(nodes, probing, echo, rotation=1, both=True)
    results: list[int] = []
    stop = asyncio.Event()

    async def traffic(src: GatewayNode, dst: str) -> None:
        async with httpx.AsyncClient(base_url=src.egress, timeout=10) as client:
            while not stop.is_set():
                r = await client.post("/sink", headers={"Host": f"echo.{dst}.svc"}, content=b"x" * 1000)
                results.append(r.status_code)
                await asyncio.sleep(0.01)

    async def revisions(node: GatewayNode, route: str) -> int:
        return max((t.revision for t in (await _route(node, route)).status.tokens), default=0)

    flows = [asyncio.create_task(traffic(alice, "bob")), asyncio.create_task(traffic(bob, "alice"))]
    try:

        async def rotated_twice() -> bool:
            return all(
                [
                    await revisions(alice, "alice-bob") >= 3,
                    await revisions(bob, "bob-alice") >= 3,
                    await revisions(bob, "alice-bob") >= 3,
                    await revisions(alice, "bob-alice") >= 3,
                ]
            )

        await wait_for(rotated_twice, timeout=30, what="two token rotations in both directions")
    finally:
        stop.set()
        await asyncio.gather(*flows)
    assert len(results) > 20
    assert set(results) == {200}, [s for s in results if s != 200]


def _signed(alice: GatewayNode, body: bytes, *, digest: str | None = None) -> bytes:
    revision, token = alice.gateway.outbound_tokens.tokens(alice.gateway.table.route("bob"), "bob")[0]
    fields = sign_request(
        token, revision, "alice", b"POST", b"/info", b"echo.bob.svc", digest or body_digest(body)
    )
    head = b"POST /info HTTP/1.1\r\nHost: echo.bob.svc\r\nContent-Length: %d\r\nConnection: close\r\n" % len(
        body
    )
    return head + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


async def test_replayed_tampered_or_unsigned_requests_are_refused(nodes, probing, echo) -> None:
    alice, bob = await _token_pair(nodes, probing, echo)
    await wait_for(lambda: alice.gateway.table.route("bob").status.tokens, what="alice's token")
    port, ctx = bob.gateway.public_port, anonymous_client_context()
    request = _signed(alice, b"hello") + b"hello"
    first = await raw_exchange("127.0.0.1", port, request, ssl_ctx=ctx)
    assert first.startswith(b"HTTP/1.1 200"), first[:300]
    assert json.loads(first.split(b"\r\n\r\n", 1)[1])["headers"]["x-accord-source-domain"] == "alice"
    replay = await raw_exchange("127.0.0.1", port, request, ssl_ctx=ctx)
    assert replay.startswith(b"HTTP/1.1 401") and b"replayed" in replay
    tampered = await raw_exchange("127.0.0.1", port, _signed(alice, b"hello") + b"HELLO", ssl_ctx=ctx)
    assert tampered.startswith(b"HTTP/1.1 401") and b"does not match its signed digest" in tampered
    unsigned = b"POST /info HTTP/1.1\r\nHost: echo.bob.svc\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    refused = await raw_exchange("127.0.0.1", port, unsigned, ssl_ctx=ctx)
    assert refused.startswith(b"HTTP/1.1 401") and b"X-Accord-Error: unauthenticated" in refused
    assert len(echo.requests) == 1


async def test_token_route_needs_the_peers_grant(nodes, probing, echo) -> None:
    alice: GatewayNode = await nodes("alice")
    bob: GatewayNode = await nodes("bob")
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint, auth="Token")
    p = Probing(alice)
    probing.append(p)
    # bob accepts no certificate-less connections at all while no peer may use a token
    reason = await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED)
    assert "does not accept our certificate" in reason
    await bob.pin("carol", identity("carol")[1])
    await bob.accept_tokens_from("carol")  # a grant for someone else opens the port, not for alice
    reason = await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED, "accepts no token authentication")
    await bob.accept_tokens_from("alice")
    await p.wait_phase("alice-bob", RoutePhase.READY, "token agreed")


async def test_peer_that_forgot_the_token_gets_a_new_one(nodes, probing, echo) -> None:
    alice, bob = await _token_pair(nodes, probing, echo)
    await bob.store.delete("DomainRoute", "alice-bob")  # bob loses the grant and its tokens ...
    bob.gateway.inbound_tokens.forget("alice")
    await bob.accept_tokens_from("alice")  # ... and grants again
    reason = await probing[0].wait_phase("alice-bob", RoutePhase.READY, "revision 2")
    assert "token agreed" in reason
    await wait_for(
        lambda: [t.revision for t in alice.gateway.table.route("bob").status.tokens][:1] == [2],
        what="alice's gateway to see revision 2",
    )
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        assert (await client.get("/info", headers={"Host": "echo.bob.svc"})).status_code == 200
