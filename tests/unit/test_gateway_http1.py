"""The strict HTTP/1.1 head parser and chunk framing: what is accepted, and what is refused why."""

from __future__ import annotations

import asyncio

import pytest

from accord.gateway.http1 import (
    Framing,
    check_buffered_chunks,
    copy_chunked,
    parse_request_head,
    parse_response_head,
)
from accord.gateway.refusals import BadRequest, UpstreamProtocolError
from accord.gateway.stream import Stream


def test_simple_request() -> None:
    req = parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: echo.bob.svc\r\nX-A:  v  \r\n\r\n")
    assert (req.method, req.target, req.host, req.minor) == (b"GET", b"/a?b=1", b"echo.bob.svc", 1)
    assert req.framing is Framing.NONE and req.keep_alive and not req.has_body
    assert req.headers.get(b"x-a") == b"v"


def test_body_framings() -> None:
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
    assert (req.framing, req.length, req.has_body) == (Framing.LENGTH, 12, True)
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert req.framing is Framing.CHUNKED
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
    assert req.length == 5  # identical repeats are one reading


def test_connection_semantics() -> None:
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive
    req = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: ws\r\n\r\n"
    )
    assert req.upgrade == b"ws"
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: ws\r\n\r\n")
    assert req.upgrade is None  # Upgrade without Connection: upgrade is not an upgrade request


def test_hop_by_hop_fields_are_not_forwarded() -> None:
    req = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
        b"X-End: 2\r\n\r\n"
    )
    assert req.headers.forwardable() == [(b"Host", b"h"), (b"X-End", b"2")]


def test_absolute_form_and_connect() -> None:
    req = parse_request_head(b"GET http://echo.bob.svc/x?y HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (req.host, req.target) == (b"echo.bob.svc", b"/x?y")
    req = parse_request_head(b"CONNECT brpc.bob.svc:9000 HTTP/1.1\r\nHost: brpc.bob.svc:9000\r\n\r\n")
    assert (req.method, req.host) == (b"CONNECT", b"brpc.bob.svc:9000")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n X: folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\n\r\n",
        b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
)
def test_ambiguous_or_malformed_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(raw)


def test_too_many_headers() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"
    with pytest.raises(BadRequest, match="more than"):
        parse_request_head(raw)


def test_response_framing_depends_on_the_request() -> None:
    assert (
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"HEAD").framing is Framing.NONE
    )
    assert parse_response_head(b"HTTP/1.1 204 No Content\r\n\r\n", b"GET").framing is Framing.NONE
    assert (
        parse_response_head(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", b"GET").framing is Framing.TUNNEL
    )
    assert parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", b"CONNECT").framing is Framing.TUNNEL
    resp = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", b"GET")
    assert resp.framing is Framing.UNTIL_CLOSE and not resp.keep_alive
    resp = parse_response_head(b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET")
    assert resp.framing is Framing.CHUNKED and resp.keep_alive
    with pytest.raises(UpstreamProtocolError):
        parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET"
        )


def test_buffered_chunk_check() -> None:
    check_buffered_chunks(b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n")
    check_buffered_chunks(b"5\r\nhel")  # incomplete is fine: validated while copying
    for bad in (b"x\r\n", b"5\r\nhelloXX", b"-1\r\n", b"5\nhello\r\n", b"10000000000000000\r\n"):
        with pytest.raises(BadRequest):
            check_buffered_chunks(bad)


class _Sink:
    """A writer stand-in that collects bytes (copy_chunked only writes and drains)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


async def _rechunk(raw: bytes) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    src = Stream.__new__(Stream)
    src.reader, src.buf, src.label = reader, bytearray(), "test"
    dst = Stream.__new__(Stream)
    sink = _Sink()
    dst.writer = sink  # type: ignore[assignment]
    await copy_chunked(src, dst, BadRequest)
    return bytes(sink.data)


async def test_chunks_are_reframed_canonically() -> None:
    out = await _rechunk(b"00005;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert out == b"5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"5\r\nhelloXX0\r\n\r\n",
        b"g\r\n",
        b"5\r\nhel",
        b"0\r\n folded: trailer\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
    ],
)
async def test_bad_chunk_framing_is_refused(raw: bytes) -> None:
    with pytest.raises((BadRequest, ConnectionError)):
        await _rechunk(raw)
