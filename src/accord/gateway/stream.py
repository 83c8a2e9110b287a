"""`Stream`: one hop of a connection (an asyncio reader/writer pair) with a small read-ahead buffer.

Every connection the gateway touches (an engine on the egress port, a peer on the public port, a pooled
link to a peer, a local engine) is a `Stream`.  The read-ahead buffer holds what the HTTP parser read
past the end of a message head; body copying drains it first and then reads the socket directly, so the
bytes of a large body are handed from one transport to the other without passing through the buffer
(the fast path: one `read`, one `write`, one `drain` per 256 KiB).

Why not asyncio's `StreamReader.readuntil`: the parser must see what is buffered (to validate the first
chunk of a chunked body before any byte is forwarded) and must bound every line, and a `StreamReader`
keeps its buffer private.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable
from typing import TypeVar

from accord.gateway.refusals import BadRequest

T = TypeVar("T")

READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024
STREAM_LIMIT = 256 * 1024


async def bounded(awaitable: Awaitable[T], timeout: float | None) -> T:
    """`await awaitable` for at most `timeout` seconds (TimeoutError after), like `asyncio.wait_for`.

    Why not `wait_for`: in Python 3.11 it can swallow a cancellation that arrives while the awaited
    operation completes, and a task that misses its cancellation keeps running (a probe worker that
    never stops holds up shutdown).  `asyncio.timeout` does not have that race.
    """
    async with asyncio.timeout(timeout):
        return await awaitable


class StreamClosed(ConnectionError):
    """The other side closed the connection where more bytes were required."""


class Stream:
    """A reader/writer pair plus read-ahead; `label` names the other side in logs."""

    __slots__ = ("buf", "label", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.label = label
        tune(writer)

    # -- reading --------------------------------------------------------------------------------

    async def fill(self) -> bool:
        """Read more into the buffer; False at end of stream."""
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    async def read_head(self, limit: int) -> bytes | None:
        """A message head up to and including the empty line; None if the stream ended cleanly first.

        Empty lines before the head are skipped (RFC 9112 2.2 lets a server ignore them).  The head must
        fit in `limit` bytes; a longer one is refused rather than buffered without bound.
        """
        start = 0
        while True:
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n", max(0, start - 3))
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > limit:
                raise BadRequest(f"message head longer than {limit} bytes")
            start = len(self.buf)
            if not await self.fill():
                if self.buf.strip(b"\r\n"):
                    raise StreamClosed("connection closed in the middle of a message head")
                return None

    async def read_line(self, limit: int) -> bytes:
        """One CRLF-terminated line (without the CRLF); a bare CR or LF in it is a framing error."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n", max(0, start - 1))
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if b"\n" in line or b"\r" in line:
                    raise BadRequest("bare CR or LF in a line")
                return line
            if len(self.buf) > limit:
                raise BadRequest(f"line longer than {limit} bytes")
            start = len(self.buf)
            if not await self.fill():
                raise StreamClosed("connection closed in the middle of a line")

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise StreamClosed(f"connection closed {n - len(self.buf)} bytes early")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_some(self, n: int = READ_SIZE) -> bytes:
        """Up to `n` bytes: the buffer first, else straight from the socket (b'' at end of stream)."""
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        return await self.reader.read(n)

    async def copy_exact(self, dst: Stream, n: int) -> None:
        """Forward exactly `n` bytes to `dst` (fast path: no buffering beyond one read)."""
        remaining = n
        writer = dst.writer
        if self.buf and remaining:
            take = min(len(self.buf), remaining)
            writer.write(bytes(self.buf[:take]))
            del self.buf[:take]
            remaining -= take
        read = self.reader.read
        while remaining:
            data = await read(min(remaining, READ_SIZE))
            if not data:
                raise StreamClosed(f"connection closed {remaining} bytes before the end of the body")
            writer.write(data)
            remaining -= len(data)
            await writer.drain()
        await writer.drain()

    async def copy_to_eof(self, dst: Stream) -> int:
        """Forward everything until the end of this stream; returns the number of bytes."""
        total = 0
        writer = dst.writer
        if self.buf:
            total += len(self.buf)
            writer.write(bytes(self.buf))
            self.buf.clear()
        read = self.reader.read
        while True:
            data = await read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            total += len(data)
            await writer.drain()
        await writer.drain()
        return total

    # -- writing and closing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    @property
    def closed(self) -> bool:
        return self.writer.is_closing() or self.reader.at_eof()

    def abort(self) -> None:
        """Drop the connection now (no TLS close_notify, no flush): for errors and revocations."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        """Flush and close; never raises (closing is best effort on a connection that may be dead)."""
        with contextlib.suppress(Exception):
            self.writer.close()
            await bounded(self.writer.wait_closed(), 2.0)
        if not self.writer.transport.is_closing():  # pragma: no cover - only when wait_closed timed out
            self.abort()


def tune(writer: asyncio.StreamWriter) -> None:
    """Large write buffers (fewer pauses on bulk transfers) and TCP keepalive (dead peers are noticed)."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
