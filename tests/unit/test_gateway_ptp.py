"""PTP pieces: the protobuf envelope, request parsing, the queue hub's bounds, and the transport's
handling of clients that leave (over socket pairs: no ports)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from accord.gateway import ptp as ptp_module
from accord.gateway.http1 import parse_request_head
from accord.gateway.ptp import (
    INVALID_REQUEST,
    OK,
    QUEUE_FULL,
    SESSION_RELEASED,
    ClientGone,
    PtpError,
    PtpHub,
    PtpTransport,
    answer_within,
    decode_outbound,
    encode_outbound,
    parse_ptp,
    ptp_method,
)
from accord.gateway.registry import ServiceRegistry
from accord.gateway.stream import Stream


def test_envelope_round_trip_and_wire_format() -> None:
    assert encode_outbound(b"", OK, "") == b"\x12\x0bE0000000000"
    data = encode_outbound(b"\x00" * 300, QUEUE_FULL, "full")
    assert data[:3] == b"\x0a\xac\x02"  # field 1, length 300 as a two-byte varint
    assert decode_outbound(data) == (b"\x00" * 300, QUEUE_FULL, "full")
    assert decode_outbound(b"") == (b"", "", "")


def test_methods_and_request_parsing() -> None:
    assert ptp_method(b"/v1/interconn/chan/push") == "push"
    assert ptp_method(b"/v1/interconn/chan/invoke?x=1") == "push"
    assert ptp_method(b"/v1/interconn/chan/pop?timeout=1") == "pop"
    assert ptp_method(b"/v1/interconn/chan/nope") is None
    assert ptp_method(b"/info") is None
    req = parse_request_head(
        b"POST /v1/interconn/chan/pop?timeout=999 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"
        b"x-ptp-session-id: s\r\nx-ptp-topic: bob-alice\r\nx-ptp-target-node-id: bob\r\n\r\n"
    )
    p = parse_ptp(req, "pop")
    assert (p.session, p.topic, p.target, p.timeout) == ("s", "bob-alice", "bob", 300.0)
    bad = parse_request_head(b"POST /v1/interconn/chan/pop HTTP/1.1\r\nHost: h\r\nx-ptp-topic: t\r\n\r\n")
    with pytest.raises(PtpError) as info:
        parse_ptp(bad, "pop")
    assert info.value.code == INVALID_REQUEST


async def test_hub_bounds_and_wakeups() -> None:
    hub = PtpHub(session_limit=100, total_limit=150, max_message=100)
    await hub.push("s1", "a-t", b"x" * 60, 0)
    with pytest.raises(PtpError) as info:
        await hub.push("s1", "a-t", b"x" * 60, 0)  # the session is full
    assert info.value.code == QUEUE_FULL
    await hub.push("s2", "a-t", b"y" * 60, 0)
    with pytest.raises(PtpError):
        await hub.push("s3", "a-t", b"z" * 60, 0)  # all sessions together are full
    # a waiting push gets in as soon as a pop makes room
    pusher = asyncio.create_task(hub.push("s1", "a-t", b"w" * 60, 5))
    await asyncio.sleep(0)
    assert await hub.pop("s1", "a-t", 0) == b"x" * 60
    await asyncio.wait_for(pusher, 5)
    assert hub.queued("s1") == 60 and hub.total == 120
    # a waiting pop is woken by a release
    popper = asyncio.create_task(hub.pop("s2", "other", 5))
    await asyncio.sleep(0)
    hub.release_session("s2")
    with pytest.raises(PtpError) as info:
        await asyncio.wait_for(popper, 5)
    assert info.value.code == SESSION_RELEASED
    assert hub.total == 60
    hub.release_session("s1", forget=True)
    assert hub.total == 0


async def test_a_message_not_delivered_goes_back_to_the_head_of_its_queue() -> None:
    hub = PtpHub()
    for message in (b"m1", b"m2"):
        await hub.push("s", "a-t", message, 0)
    taken = await hub.take("s", "a-t", 0)
    assert taken is not None and taken.data == b"m1" and hub.queued("s") == 2
    # while m1 is out no other pop is served (it would get m2 ahead of m1)...
    assert await hub.take("s", "a-t", 0) is None
    waiting = asyncio.create_task(hub.take("s", "a-t", 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # ...and when its answer could not be written, m1 is the next message again
    hub.settle(taken, delivered=False)
    again = await asyncio.wait_for(waiting, 5)
    assert again is not None and again.data == b"m1"
    hub.settle(again, delivered=True)
    hub.settle(again, delivered=False)  # settling twice changes nothing
    assert await hub.pop("s", "a-t", 0) == b"m2"
    assert hub.total == 0
    stats = hub.stats("s")
    assert stats is not None and (stats.pops, stats.requeued, stats.empty) == (2, 1, 1)
    # a message taken when its topic is released is dropped, not put back
    await hub.push("s", "a-t", b"m3", 0)
    taken = await hub.take("s", "a-t", 0)
    assert taken is not None
    hub.release_topic("s", "a-t")
    hub.settle(taken, delivered=False)
    assert hub.queued("s") == hub.total == 0


async def test_a_push_waiting_for_room_is_dropped_when_its_client_leaves() -> None:
    hub = PtpHub(session_limit=100)
    await hub.push("s", "a-t", b"x" * 60, 0)
    left = asyncio.get_running_loop().create_future()
    pusher = asyncio.create_task(hub.push("s", "a-t", b"y" * 60, 5, lambda: left))
    await asyncio.sleep(0.05)
    left.set_result(None)  # the client disconnected
    with pytest.raises(ClientGone):
        await asyncio.wait_for(pusher, 5)
    assert await hub.pop("s", "a-t", 0) == b"x" * 60
    assert await hub.pop("s", "a-t", 0) is None  # never queued, even now that there is room
    stats = hub.stats("s")
    assert stats is not None and stats.dropped == 1 and stats.pushes == 1


def test_long_polls_are_answered_before_the_client_timeout() -> None:
    assert answer_within(0) == 0
    assert 0.7 <= answer_within(1) < 1
    assert 1.5 <= answer_within(2) < 2
    assert 118 <= answer_within(120) < 120


async def test_release_logs_the_session_counters(caplog: pytest.LogCaptureFixture) -> None:
    hub = PtpHub(session_limit=2_000_000)
    for _ in range(3):
        await hub.push("job-1", "a-t", b"x" * 500_000, 0)
    assert await hub.pop("job-1", "a-t", 0) is not None
    assert await hub.pop("job-1", "b-t", 0) is None
    with pytest.raises(PtpError):
        await hub.push("job-1", "a-t", b"x" * 1_500_000, 0)
    with caplog.at_level(logging.INFO, logger="accord.gateway.ptp"):
        hub.release_session("job-1")
        hub.release_session("job-1", forget=True)  # already released: logged once
    lines = [r.getMessage() for r in caplog.records if "released" in r.getMessage()]
    assert lines == [
        "PTP session job-1 released: 3 pushes (1.5 MB), 1 pops (0.5 MB), 1 empty pops, "
        "1 QueueFull answers, 1.0 MB left unread"
    ]


# -- the transport over a socket pair ------------------------------------------------------------------


def _transport(hub: PtpHub) -> PtpTransport:
    registry = ServiceRegistry("bob")
    registry.register_session("s", parties={"alice", "bob"})
    return PtpTransport("bob", registry, hub)


async def _engine_connection() -> tuple[Stream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    reader, writer = await asyncio.open_connection(sock=ours)
    return Stream(reader, writer, "engine"), theirs


def _head(method: str, query: str = "", length: int = 0) -> bytes:
    return (
        f"POST /v1/interconn/chan/{method}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-ptp-session-id: s\r\n"
        f"x-ptp-topic: t\r\nx-ptp-target-node-id: {'alice' if method == 'pop' else 'bob'}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_pop_answer_not_written_puts_the_message_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ptp_module, "ANSWER_TIMEOUT", 0.3)
    hub = PtpHub()
    transport = _transport(hub)
    big = b"a" * (8 << 20)
    await hub.push("s", "alice-t", big, 0)
    await hub.push("s", "alice-t", b"b", 0)
    stream, theirs = await _engine_connection()  # an engine that stopped reading
    req = parse_request_head(_head("pop", "?timeout=5"))
    try:
        keep = await asyncio.wait_for(transport.handle_engine(stream, req, parse_ptp(req, "pop")), 5)
    finally:
        theirs.close()
        await stream.close()
    assert keep is False
    assert await hub.pop("s", "alice-t", 0) == big  # back at the head: the order is kept
    assert await hub.pop("s", "alice-t", 0) == b"b"


async def test_a_pop_whose_client_left_takes_nothing() -> None:
    hub = PtpHub()
    transport = _transport(hub)
    stream, theirs = await _engine_connection()
    req = parse_request_head(_head("pop", "?timeout=10"))
    popping = asyncio.create_task(transport.handle_engine(stream, req, parse_ptp(req, "pop")))
    await asyncio.sleep(0.05)
    theirs.close()  # the engine gave up
    await asyncio.sleep(0.05)
    await hub.push("s", "alice-t", b"m", 0)
    try:
        assert await asyncio.wait_for(popping, 5) is False
    finally:
        await stream.close()
    assert await hub.pop("s", "alice-t", 0) == b"m"


async def test_a_local_push_waiting_for_room_is_dropped_when_its_client_leaves() -> None:
    hub = PtpHub(session_limit=100)
    transport = _transport(hub)
    await hub.push("s", "bob-t", b"x" * 60, 0)
    stream, theirs = await _engine_connection()
    theirs.sendall(b"y" * 60)
    req = parse_request_head(_head("push", "?timeout=10", 60))
    pushing = asyncio.create_task(transport.handle_engine(stream, req, parse_ptp(req, "push")))
    await asyncio.sleep(0.1)
    assert not pushing.done()  # waiting for room
    theirs.close()
    try:
        assert await asyncio.wait_for(pushing, 5) is False
    finally:
        await stream.close()
    assert await hub.pop("s", "bob-t", 0) == b"x" * 60
    assert await hub.pop("s", "bob-t", 0) is None
    # a push that finds room is answered as before
    stream, theirs = await _engine_connection()
    theirs.sendall(b"z" * 60)
    try:
        assert await asyncio.wait_for(transport.handle_engine(stream, req, parse_ptp(req, "push")), 5)
        assert decode_outbound(theirs.recv(1024).split(b"\r\n\r\n", 1)[1])[1] == OK
    finally:
        theirs.close()
        await stream.close()
    assert hub.queued("s") == 60
