"""Serving an ASGI app on a real uvicorn server in a background thread, for tests (httpx's `serve_in_thread`).

Tests of the client SDK and the CLI must talk to a real server over a real socket: streaming (watch,
follow logs), connection errors and HTTP framing are exactly what an in-process transport hides.  The
server binds 127.0.0.1 on a free port (or a socket the test bound first, when the port must be known
before the app is built), runs its own event loop in its own thread, and is stopped and joined on exit,
with every wait bounded.

Objects with loop-bound state (a MemoryStore's locks) must be used only from the server's loop once it
runs; tests therefore populate such stores through the API, or hand a coroutine to `run_in_server`.

`serve_node_dir` is a node without the daemon: a node directory (config + token, as `accord node init`
writes them, minus the key pair) and the real API over a MemoryStore, for client and CLI tests.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from accord.api.app import create_app
from accord.services import Services
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

T = TypeVar("T")

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


def bind_loopback() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port (not yet listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServerThread:
    """`with ServerThread(app) as server: httpx.get(server.url + "/healthz")`."""

    def __init__(self, app: Any, *, sock: socket.socket | None = None) -> None:
        self.app = app
        self._sock = sock or bind_loopback()
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by __enter__ / stop
            self._error = exc

    def run_in_server(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the server's event loop (where its store lives) and return its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the test server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"test server on {self.url} did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_SECONDS)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"test server on {self.url} did not stop within {STOP_TIMEOUT_SECONDS}s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class RunningNode:
    """What `serve_node_dir` yields: the node directory, its services and the server in front of them."""

    dir: Path
    services: Services
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the server's loop (e.g. to seed the store with objects users cannot create)."""
        return self.server.run_in_server(coro, timeout)


@contextmanager
def serve_node_dir(
    directory: Path,
    *,
    token: str,
    domain: str = "alice",
    store: MemoryStore | None = None,
    watch_heartbeat_seconds: float = 15.0,
    log_poll_seconds: float = 0.01,
) -> Iterator[RunningNode]:
    """A node directory whose accord.toml points at a running API over `store` (a MemoryStore)."""
    sock = bind_loopback()
    settings = NodeSettings(domain=domain, dir=directory.resolve(), api_port=int(sock.getsockname()[1]))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "accord.toml").write_text(settings.to_toml())
    settings.token_path.write_text(token + "\n")
    services = Services.build(
        store=store or MemoryStore(), settings=settings, log_poll_seconds=log_poll_seconds
    )
    app = create_app(services, settings, token, watch_heartbeat_seconds=watch_heartbeat_seconds)
    with ServerThread(app, sock=sock) as server:
        yield RunningNode(dir=directory, services=services, server=server)
