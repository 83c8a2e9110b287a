"""PTP pieces without sockets: the protobuf envelope, request parsing and the queue hub's bounds."""

from __future__ import annotations

import asyncio

import pytest

from accord.gateway.http1 import parse_request_head
from accord.gateway.ptp import (
    INVALID_REQUEST,
    OK,
    QUEUE_FULL,
    SESSION_RELEASED,
    PtpError,
    PtpHub,
    decode_outbound,
    encode_outbound,
    parse_ptp,
    ptp_method,
)


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
