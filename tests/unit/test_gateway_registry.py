"""ServiceRegistry policy: who may reach which service, and until when."""

from __future__ import annotations

import pytest

from accord.errors import AlreadyExists, InvalidArgument
from accord.gateway.hosts import parse_service_host
from accord.gateway.refusals import BadRequest, NotAllowed, UnknownService
from accord.gateway.registry import ANY_PEER, ServiceEntry, ServiceRegistry


def test_resolve_applies_the_policy() -> None:
    registry = ServiceRegistry("bob")
    registry.register("psi", 4000, allowed={"alice"}, task="t1")
    assert registry.resolve("psi", "alice").port == 4000
    with pytest.raises(NotAllowed, match="not open to domain 'carol'"):
        registry.resolve("psi", "carol")
    with pytest.raises(UnknownService):
        registry.resolve("nope", "alice")
    assert registry.resolve("psi", "bob").port == 4000  # the own domain is always allowed


def test_any_peer() -> None:
    registry = ServiceRegistry("bob")
    registry.register("accord", 8082, allowed={ANY_PEER})
    assert registry.resolve("accord", "whoever").port == 8082


def test_task_lifetime_and_listeners() -> None:
    registry = ServiceRegistry("bob")
    removed: list[ServiceEntry] = []
    registry.subscribe(removed.append)
    registry.register("a", 1, allowed={"alice"}, task="t1")
    registry.register("b", 2, allowed={"alice"}, task="t1")
    registry.register("c", 3, allowed={"alice"}, task="t2")
    assert sorted(registry.unregister_task("t1")) == ["a", "b"]
    assert [e.name for e in removed] == ["a", "b"]
    assert [e.name for e in registry.services()] == ["c"]
    assert registry.unregister("a") is False


def test_registration_rules() -> None:
    registry = ServiceRegistry("bob")
    registry.register("svc", 1, allowed=set(), task="t1")
    with pytest.raises(AlreadyExists):
        registry.register("svc", 2, allowed=set(), task="t2")
    registry.register("svc", 2, allowed={"alice"}, task="t1")  # same task: replaced
    assert registry.resolve("svc", "alice").port == 2
    for bad in ("handshake", "transit", "Bad_Name"):
        with pytest.raises(InvalidArgument):
            registry.register(bad, 1, allowed=set())
    with pytest.raises(InvalidArgument):
        registry.register("x", 70000, allowed=set())
    with pytest.raises(InvalidArgument):
        registry.register("x", 1, allowed={"Not A Domain"})


def test_service_hosts() -> None:
    assert parse_service_host(b"echo.bob.svc") == ("echo", "bob")
    assert parse_service_host(b"Echo.Bob.svc:8080") == ("echo", "bob")
    for bad in (b"bob.svc", b"a.b.c.svc", b"echo.bob.com", b"[::1]:80", b"e_x.bob.svc", b""):
        with pytest.raises(BadRequest):
            parse_service_host(bad)
