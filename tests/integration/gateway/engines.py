"""Test "engines": an HTTP/1.1 echo server (h11, independent of the gateway's own parser) and a TCP echo.

Both record what reaches them *as soon as it arrives* (a request is recorded when its head is parsed,
a TCP connection when it is accepted), so a security test can assert that nothing reached the engine.
Runnable as a script for the network-namespace test: `python engines.py http|tcp PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

PATTERN = bytes(range(256)) * 1024  # 256 KiB of a known pattern


def pattern_bytes(n: int) -> bytes:
    reps, rest = divmod(n, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class EchoEngine:
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    host: str = "127.0.0.1"
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> EchoEngine:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                event = await _next(conn, reader)
                if isinstance(event, h11.ConnectionClosed) or event is None:
                    return
                if not isinstance(event, h11.Request):
                    return
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                self.requests.append(Seen(event.method.decode(), event.target.decode(), headers))
                await self._respond(conn, reader, writer, event, headers)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _respond(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        headers: dict[str, str],
    ) -> None:
        url = urlsplit(request.target.decode())
        query = {k: v[0] for k, v in parse_qs(url.query).items()}

        def send(*events: h11.Event) -> None:
            for ev in events:
                data = conn.send(ev)
                if data:
                    writer.write(data)

        if url.path == "/echo":
            # full duplex: the response starts before the request body has been read
            send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
            await writer.drain()
            while True:
                event = await _next(conn, reader)
                if isinstance(event, h11.Data):
                    send(h11.Data(data=bytes(event.data)))
                    await writer.drain()
                else:
                    break
            send(h11.EndOfMessage())
            await writer.drain()
            return
        size, digest = 0, hashlib.sha256()
        while True:
            event = await _next(conn, reader)
            if isinstance(event, h11.Data):
                size += len(event.data)
                digest.update(event.data)
            else:
                break
        if url.path == "/source":
            n = int(query.get("n", "0"))
            send(h11.Response(status_code=200, headers=[("Content-Length", str(n))]))
            sent = 0
            while sent < n:
                piece = PATTERN[: min(len(PATTERN), n - sent)]
                send(h11.Data(data=piece))
                sent += len(piece)
                await writer.drain()
            send(h11.EndOfMessage())
        elif url.path == "/stream":
            send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
            for i in range(int(query.get("n", "3"))):
                send(h11.Data(data=f"tick {i}\n".encode()))
                await writer.drain()
                await asyncio.sleep(float(query.get("interval", "0.05")))
            send(h11.EndOfMessage())
        else:
            body = json.dumps(
                {
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "headers": headers,
                    "bytes": size,
                    "sha256": digest.hexdigest(),
                }
            ).encode()
            send(
                h11.Response(
                    status_code=200,
                    headers=[("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        await writer.drain()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(256 * 1024)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return None
        assert isinstance(event, h11.Event)
        return event


@dataclass
class TcpEcho:
    """A byte echo (what a brpc/gRPC engine looks like to a tunnel): records accepted connections."""

    connections: int = 0
    port: int = 0
    host: str = "127.0.0.1"
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> TcpEcho:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _serve_forever(kind: str, host: str, port: int) -> None:
    engine: EchoEngine | TcpEcho = (
        EchoEngine(host=host, port=port) if kind == "http" else TcpEcho(host=host, port=port)
    )
    await engine.start()
    print(f"READY {engine.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_forever(sys.argv[1], "127.0.0.1", int(sys.argv[2])))
