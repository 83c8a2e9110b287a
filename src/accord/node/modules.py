"""The node's modules as uniform, supervisable units: a name, `run()` until cancelled, a `ready` event.

Kuscia's `Module{Run, WaitReady, Name}` in asyncio form.  Each module owns one component's lifecycle
(the API server, the controller manager, the gateway) so the daemon can start them side by side, wait
until all are ready, and stop them in reverse order when the node shuts down or one of them dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

import uvicorn

from accord.api.app import close_streams

log = logging.getLogger(__name__)


class Module(Protocol):
    name: str
    ready: asyncio.Event

    async def run(self) -> None:
        """Serve until cancelled; return only when asked to stop."""
        ...

    def request_stop(self) -> None:
        """Begin a graceful stop (run() then returns soon); cancellation follows after the grace."""
        ...


class CallableModule:
    """A module from an async callable that runs until cancelled (controllers, gateway)."""

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        ready: asyncio.Event | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.ready = ready if ready is not None else asyncio.Event()
        self._auto_ready = ready is None
        self._on_stop = on_stop
        self._task: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        self._task = asyncio.current_task()
        if self._auto_ready:
            self.ready.set()
        await self._run()

    def request_stop(self) -> None:
        """Call the module's own stop hook if it has one, else cancel it (its cleanup runs in finally)."""
        if self._on_stop is not None:
            self._on_stop()
        elif self._task is not None:
            self._task.cancel()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling (the daemon owns SIGTERM/SIGINT for every module) that
    sets an event once it listens, so readiness needs no polling."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event) -> None:
        super().__init__(config)
        self._started_event = started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._started_event.set()


class PortInUse(OSError):
    pass


def bind_socket(host: str, port: int, what: str) -> socket.socket:
    """Bind a listening TCP socket now, so a port conflict is a clear error before anything starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port} for the {what}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ApiModule:
    """The local HTTP API (FastAPI app) on uvicorn, inside the node's event loop."""

    name = "api"

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.ready = asyncio.Event()
        self._app = app
        self._sock = sock
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        self._server = _QuietServer(config, self.ready)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def run(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    def request_stop(self) -> None:
        close_streams(self._app)  # end open watches/follows now, not after the graceful-shutdown timeout
        self._server.should_exit = True
