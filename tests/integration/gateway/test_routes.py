"""Route handshake and health (Kuscia's route scenarios), with the RouteController in a ControllerManager.

The probe interval is short here (0.1 s); the assertions wait for the status with a bound, never for a
time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from accord.resources.domain import DomainRoute
from accord.resources.phases import RoutePhase
from tests.integration.gateway.harness import GatewayNode, Probing, fresh_identity, mesh, wait_for


@pytest.fixture
async def probing() -> AsyncIterator[list[Probing]]:
    running: list[Probing] = []
    yield running
    for p in running:
        await p.stop()


async def _pair(nodes, probing) -> tuple[GatewayNode, GatewayNode, Probing]:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    p = Probing(alice)
    probing.append(p)
    await alice.route("bob", bob.endpoint)
    return alice, bob, p


async def test_route_becomes_ready_after_handshake(nodes, probing) -> None:
    alice, _bob, p = await _pair(nodes, probing)
    reason = await p.wait_phase("alice-bob", RoutePhase.READY)
    assert "direct" in reason and "protocol 1" in reason
    route = await alice.store.get("DomainRoute", "alice-bob")
    assert isinstance(route, DomainRoute)
    assert route.status.peer_version == "1" and route.status.last_ready_at is not None


async def test_route_through_transit_becomes_ready(nodes, probing) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    carol = await nodes("carol")
    await mesh(alice, bob, carol)
    p = Probing(alice)
    probing.append(p)
    await alice.route("carol", carol.endpoint)
    await carol.route("bob", bob.endpoint)
    await alice.route("bob", "", via="carol")
    assert "through carol" in await p.wait_phase("alice-bob", RoutePhase.READY)
    await carol.unroute("bob")
    reason = await p.wait_phase("alice-bob", RoutePhase.UNREACHABLE)
    assert "carol refused" in reason and "no route from carol to bob" in reason


async def test_peer_offline_then_back(nodes, probing) -> None:
    """Kuscia: stop bob -> not ready within 60 s; start bob -> ready; traffic flows again."""
    _alice, bob, p = await _pair(nodes, probing)
    await p.wait_phase("alice-bob", RoutePhase.READY)
    await bob.stop()
    reason = await p.wait_phase("alice-bob", RoutePhase.UNREACHABLE)
    assert "cannot connect to bob" in reason
    await bob.restart()
    await p.wait_phase("alice-bob", RoutePhase.READY)


async def test_peer_certificate_replaced_is_unauthorized(nodes, probing) -> None:
    """bob gets a new key pair: alice's pin no longer matches until she updates it."""
    alice, bob, p = await _pair(nodes, probing)
    await p.wait_phase("alice-bob", RoutePhase.READY)
    new_key, new_cert = fresh_identity("bob")
    await bob.restart(key_cert=(new_key, new_cert))
    reason = await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED, "presented certificate")
    assert "pinned certificate of Domain bob" in reason
    await alice.pin("bob", new_cert)
    await p.wait_phase("alice-bob", RoutePhase.READY)


async def test_wrong_pinned_certificate_then_restored(nodes, probing) -> None:
    """Kuscia: patch the peer Domain's cert -> not ready; restore -> ready."""
    alice, bob, p = await _pair(nodes, probing)
    await p.wait_phase("alice-bob", RoutePhase.READY)
    _, other = fresh_identity("bob")
    await alice.pin("bob", other)
    await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED, "presented certificate")
    await alice.pin("bob", bob.cert)
    await p.wait_phase("alice-bob", RoutePhase.READY)


async def test_peer_deletes_our_domain_refuses_open_and_new_connections(nodes, probing, echo) -> None:
    """Kuscia: authorisation removed at bob -> not ready, open connections refused; restored -> ready."""
    alice, bob, p = await _pair(nodes, probing)
    bob.registry.register("echo", echo.port, allowed={"alice"})
    await p.wait_phase("alice-bob", RoutePhase.READY)
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        assert (await client.get("/info", headers={"Host": "echo.bob.svc"})).status_code == 200
        assert bob.gateway.tracker.count("alice") == 1  # alice's pooled link, open at bob
        await bob.unpin("alice")
        await wait_for(lambda: bob.gateway.tracker.count("alice") == 0, what="bob to drop alice's links")
        r = await client.get("/info", headers={"Host": "echo.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (502, "peer-unauthorized")
        reason = await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED)
        assert "does not accept our certificate" in reason
        await bob.pin("alice", alice.cert)
        await p.wait_phase("alice-bob", RoutePhase.READY)
        assert (await client.get("/info", headers={"Host": "echo.bob.svc"})).status_code == 200


async def test_route_deleted_refuses_traffic(nodes, probing, echo) -> None:
    alice, bob, _p = await _pair(nodes, probing)
    bob.registry.register("echo", echo.port, allowed={"alice"})
    async with httpx.AsyncClient(base_url=alice.egress, timeout=10) as client:
        assert (await client.get("/info", headers={"Host": "echo.bob.svc"})).status_code == 200
        await alice.unroute("bob")
        assert alice.gateway.peer_pool.idle_count("bob") == 0  # pooled links closed with the route
        r = await client.get("/info", headers={"Host": "echo.bob.svc"})
        assert (r.status_code, r.headers["x-accord-error"]) == (404, "unknown-route")


async def test_route_of_unknown_peer_is_unauthorized(nodes, probing) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    p = Probing(alice)
    probing.append(p)
    await alice.route("bob", bob.endpoint)
    reason = await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED)
    assert "no certificate pinned for domain bob" in reason


async def test_endpoint_that_is_not_tls_is_unreachable(nodes, probing, echo) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    p = Probing(alice)
    probing.append(p)
    await alice.route("bob", f"https://127.0.0.1:{echo.port}")  # a plain-HTTP server (Kuscia #450)
    reason = await p.wait_phase("alice-bob", RoutePhase.UNREACHABLE)
    assert "TLS handshake" in reason


async def test_a_route_not_ready_is_probed_again_soon_not_a_whole_interval_later(nodes, probing) -> None:
    """The partner pins us only after our route exists: with a 60 s health interval, the route still
    becomes Ready within a few seconds (UNREADY_RETRY_SECONDS), as `accord route add` users expect."""
    alice = await nodes("alice")
    bob = await nodes("bob")
    await alice.pin("bob", bob.cert)  # alice knows bob; bob does not know alice yet
    p = Probing(alice)
    p.controller.probe_interval = 60.0
    probing.append(p)
    await alice.route("bob", bob.endpoint)
    await p.wait_phase("alice-bob", RoutePhase.UNAUTHORIZED)
    await bob.pin("alice", alice.cert)
    await p.wait_phase("alice-bob", RoutePhase.READY)
