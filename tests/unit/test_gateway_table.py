"""RoutingTable: pins and routes from store objects, route plans, and what counts as a change."""

from __future__ import annotations

import functools

import pytest

from accord.gateway.refusals import PeerUnauthorized, UnknownRoute
from accord.gateway.table import Changes, RoutingTable, parse_endpoint
from accord.kms.identity import fingerprint, generate_identity
from accord.resources.domain import Domain, DomainRoute
from accord.resources.phases import RoutePhase
from accord.store.memory import MemoryStore


@functools.cache
def cert(name: str) -> str:
    return generate_identity(name)[1].decode()


def domain(name: str, pem: str | None = None, role: str = "partner") -> Domain:
    return Domain.model_validate({"meta": {"name": name}, "spec": {"role": role, "cert": pem or cert(name)}})


def route(dest: str, endpoint: str = "https://10.0.0.2:8443", via: str = "", name: str = "") -> DomainRoute:
    return DomainRoute.model_validate(
        {
            "meta": {"name": name or f"alice-{dest}"},
            "spec": {"source": "alice", "destination": dest, "endpoint": endpoint, "transit": via},
        }
    )


async def test_follow_builds_pins_and_plans() -> None:
    store = MemoryStore()
    await store.create(domain("alice", role=""))  # our own Domain is not a peer
    await store.create(domain("bob"))
    await store.create(domain("carol"))
    await store.create(route("carol", "https://c.example:9443"))
    await store.create(route("bob", via="carol"))
    await store.create(
        DomainRoute.model_validate(
            {"meta": {"name": "bob-alice"}, "spec": {"source": "bob", "destination": "alice"}}
        )
    )
    table = RoutingTable("alice")
    await table.load(store)
    assert [p.name for p in table.peers()] == ["bob", "carol"]
    assert table.identify(fingerprint(cert("bob"))) == "bob"
    assert table.identify(fingerprint(cert("alice"))) is None
    plan = table.plan("bob")
    assert plan.transit == "carol"
    assert (plan.first.host, plan.first.port, plan.first.fingerprint) == (
        "c.example",
        9443,
        fingerprint(cert("carol")),
    )
    assert plan.final is not None and plan.final.fingerprint == fingerprint(cert("bob"))
    assert table.route("alice") is None  # bob's route to us is not ours
    with pytest.raises(UnknownRoute, match="accord route add --to zed"):
        table.plan("zed")


def test_missing_pin_and_nested_transit_are_refused() -> None:
    table = RoutingTable("alice")
    table.replace([route("bob"), domain("carol"), route("carol", via="dave"), route("erin", via="carol")])
    with pytest.raises(PeerUnauthorized, match="no certificate pinned for domain bob"):
        table.plan("bob")
    with pytest.raises(UnknownRoute, match="must be reachable directly"):
        table.plan("erin")


def test_changes_distinguish_pins_routes_and_status() -> None:
    seen: list[Changes] = []
    table = RoutingTable("alice")
    table.subscribe(seen.append)
    table.replace([domain("bob"), domain("carol"), route("carol"), route("bob", via="carol")])
    assert seen[-1].pins == {"bob", "carol"} and seen[-1].routes == {"bob", "carol"}
    before = table.pins_version
    # a status-only update changes nothing
    r = route("carol")
    r.status.phase = RoutePhase.READY
    table.replace([domain("bob"), domain("carol"), r, route("bob", via="carol")])
    assert len(seen) == 1 and table.pins_version == before
    # replacing carol's certificate changes her pin and every route through her
    table.replace([domain("bob"), domain("carol", cert("other")), r, route("bob", via="carol")])
    assert seen[-1].pins == {"carol"} and seen[-1].routes == {"bob"}
    assert table.pins_version == before + 1


def test_duplicate_routes_pick_the_first_name() -> None:
    table = RoutingTable("alice")
    table.replace(
        [domain("bob"), route("bob", "https://b:1", name="b-2"), route("bob", "https://a:1", name="b-1")]
    )
    assert table.plan("bob").route_name == "b-1"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://h:1", ("h", 1)),
        ("h:2", ("h", 2)),
        ("https://[::1]:3", ("::1", 3)),
        ("https://h", ("h", 8443)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


def test_parse_endpoint_rejects_plain_http() -> None:
    from accord.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="https"):
        parse_endpoint("http://h:1")
