"""The network shim: the only way out of (and into) a sandbox that has no network of its own.

Why: the sandbox runs in its own network namespace (`bwrap --unshare-net`), so the engine has a private
loopback and nothing else: no outside network, no DNS, and not the host's 127.0.0.1 either.  But an
engine needs exactly three host services -- the gateway's egress port (to reach peers), the node's local
API (progress reports, with its one-time token) and DataMesh -- and peers must reach the engine's own
service ports through the gateway.  Sharing the host network would hand the engine every host port
(databases, other engines, the node's admin API); this shim hands it exactly the listed ones.

How (two halves, both asyncio, stdlib only so the in-sandbox half starts as `python -I netshim.py`
without importing anything the engine's environment could influence):

- Inside the sandbox (`main`, the sandbox's top process, parent of the engine): for each outbound
  service it listens on the sandbox's 127.0.0.1 at the *same* port number the engine was told, and
  forwards each connection to a unix socket ``<task dir>/.sandbox/out/<name>``; for each inbound service
  port it serves a unix socket ``<task dir>/.sandbox/in/<port>`` and forwards to the engine's
  127.0.0.1:<port>.  Filesystem unix sockets are not bound to a network namespace, which is what makes
  this bridge possible.
- On the host (`HostBridge`, run by the node): it serves ``.sandbox/out/<name>`` and connects each
  connection to the real (host, port); it listens on host 127.0.0.1:<port> for each inbound port and
  connects to ``.sandbox/in/<port>``.

What the engine can and cannot do with it: ``.sandbox`` is mounted read-only in the sandbox, so the
engine cannot add, remove or replace the outbound sockets (connect() on a read-only mount still works
for sockets); ``.sandbox/in`` is writable (the shim creates its sockets there), so the host side opens
each inbound socket with O_PATH|O_NOFOLLOW, checks it is a socket owned by the sandbox's uid and only
then connects through /proc/self/fd -- a symlink or a hard link to some other host socket placed there
by the engine is refused, so a peer's bytes can never be steered to a host socket of the engine's
choosing.  Paths through /proc/self/fd also keep socket addresses under the 108-byte limit however deep
the task directory is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OUT_DIR = ".sandbox/out"
IN_DIR = ".sandbox/in"
CHUNK = 1 << 16
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class NetworkPolicy:
    """`isolated`: own network namespace; only `outbound` host services (name -> (host, port), reached
    inside at 127.0.0.1:<port>) and `inbound` engine ports (host 127.0.0.1:<port> -> engine) are bridged.
    `host`: share the host's network (no isolation; for debugging or machines without bwrap)."""

    mode: Literal["isolated", "host"] = "isolated"
    outbound: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    inbound: Sequence[int] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "outbound": {k: [h, p] for k, (h, p) in self.outbound.items()},
            "inbound": list(self.inbound),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkPolicy:
        out = {str(k): (str(v[0]), int(v[1])) for k, v in dict(data.get("outbound", {})).items()}
        mode: Literal["isolated", "host"] = "host" if data.get("mode") == "host" else "isolated"
        return cls(mode, out, [int(p) for p in data.get("inbound", [])])


class BridgeError(Exception):
    """A bridge socket could not be served or reached (the message says which and why)."""


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copy both ways until both directions ended (half-close aware), then close both."""
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
        for writer in (a[1], b[1]):
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _quietly_cancelled(handle: Handler) -> Handler:
    """A connection handler that ends normally when `close()` cancels it: asyncio 3.11's stream server
    would otherwise log every cancelled connection as an error ("Exception in callback ...")."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except asyncio.CancelledError:
            _abort(writer)

    return run


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        writer.close()


# ---------------------------------------------------------------------------------------------- host


class HostBridge:
    """Host half of the shim for one task directory; run by the node in its event loop.

    `targets`: outbound services by name -> the real (host, port) the sandbox's `out/<name>` leads to.
    `services`: the engine's own ports; host 127.0.0.1:<port> leads to the engine's 127.0.0.1:<port>.
    `sandbox_uid`: the uid the in-sandbox shim runs as (its inbound sockets must be owned by it);
    None accepts any owner (use only when engine and node share a uid).
    `listen_sockets`: sockets already bound to host 127.0.0.1:<port> for some `services` (the runtime
    holds each engine port from allocation on, so no other program can take it meanwhile); the bridge
    listens on them and closes them with itself.  Ports without one are bound here.

    Restart-safe: a restarted node builds a new HostBridge for a running engine and serves the same paths.
    """

    def __init__(
        self,
        task_dir: str | Path,
        targets: Mapping[str, tuple[str, int]] | None = None,
        services: Sequence[int] = (),
        *,
        sandbox_uid: int | None = None,
        connect_wait: float = 5.0,
        listen_sockets: Mapping[int, socket.socket] | None = None,
    ) -> None:
        self.task_dir = Path(task_dir)
        self._held = dict(listen_sockets or {})
        self.targets = dict(targets or {})
        self.services = list(services)
        self.sandbox_uid = sandbox_uid
        self.connect_wait = connect_wait
        self._servers: list[asyncio.base_events.Server] = []
        self._fds: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        for name in self.targets:
            if not name or "/" in name or name.startswith("."):
                raise BridgeError(f"invalid bridge name {name!r}")

    async def start(self) -> None:
        out_dir = self.task_dir / OUT_DIR
        in_dir = self.task_dir / IN_DIR
        try:
            out_fd = os.open(out_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
            self._fds.append(out_fd)
            in_fd = os.open(in_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW) if self.services else -1
            if in_fd >= 0:
                self._fds.append(in_fd)
        except OSError as exc:
            await self.close()
            raise BridgeError(f"bridge directories missing under {self.task_dir}: {exc}") from exc
        try:
            for name, target in self.targets.items():
                path = f"/proc/self/fd/{out_fd}/{name}"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # a previous node process left it; the engine cannot write here
                server = await asyncio.start_unix_server(self._outbound(name, target), path=path)
                self._servers.append(server)
                if self.sandbox_uid is not None and os.geteuid() == 0:
                    os.chown(path, self.sandbox_uid, -1)
                os.chmod(path, 0o600 if self.sandbox_uid is not None else 0o666)
            for port in self.services:
                held = self._held.pop(port, None)
                if held is not None:
                    server = await asyncio.start_server(self._inbound(in_fd, port), sock=held)
                else:
                    server = await asyncio.start_server(self._inbound(in_fd, port), "127.0.0.1", port)
                self._servers.append(server)
        except OSError as exc:
            await self.close()
            raise BridgeError(f"cannot serve the sandbox bridge for {self.task_dir}: {exc}") from exc

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for sock in self._held.values():  # handed over but never served (start failed early)
            sock.close()
        self._held.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    async def __aenter__(self) -> HostBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _outbound(self, name: str, target: tuple[str, int]) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._track()
            try:
                upstream = await asyncio.open_connection(*target)
            except OSError:
                _abort(writer)
                return
            await splice((reader, writer), upstream)

        return _quietly_cancelled(handle)

    def _inbound(self, in_fd: int, port: int) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._track()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.connect_wait
            while True:  # the shim may not serve yet (engine starting): wait a bounded while
                try:
                    inner = await self._connect_inbound(in_fd, port)
                    break
                except (OSError, BridgeError):
                    if loop.time() >= deadline:
                        _abort(writer)
                        return
                    await asyncio.sleep(0.05)
            await splice((reader, writer), inner)

        return _quietly_cancelled(handle)

    async def _connect_inbound(
        self, in_fd: int, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        fd = os.open(str(port), os.O_PATH | os.O_NOFOLLOW, dir_fd=in_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISSOCK(info.st_mode):
                raise BridgeError(f"{IN_DIR}/{port} is not a socket")
            if self.sandbox_uid is not None and info.st_uid != self.sandbox_uid:
                raise BridgeError(f"{IN_DIR}/{port} is owned by uid {info.st_uid}, not the sandbox's")
            return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------- sandbox


async def _serve_in_sandbox(
    outbound: Mapping[int, str], inbound: Sequence[int], argv: Sequence[str], env: Mapping[str, str]
) -> int:
    tasks: set[asyncio.Task[None]] = set()

    def tracked() -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def out_handler(name: str) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tracked()
            try:  # relative path: cwd is the task dir, and it keeps the address short
                upstream = await asyncio.open_unix_connection(f"{OUT_DIR}/{name}")
            except OSError:
                _abort(writer)
                return
            await splice((reader, writer), upstream)

        return _quietly_cancelled(handle)

    def in_handler(port: int) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tracked()
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                _abort(writer)
                return
            await splice((reader, writer), upstream)

        return _quietly_cancelled(handle)

    servers: list[asyncio.base_events.Server] = []
    for port, name in outbound.items():
        try:
            servers.append(await asyncio.start_server(out_handler(name), "127.0.0.1", port))
        except OSError as exc:  # e.g. a port below 1024: the engine runs without that one service
            print(f"accord netshim: cannot serve {name} on 127.0.0.1:{port}: {exc}", file=sys.stderr)
    for port in inbound:
        path = f"{IN_DIR}/{port}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(in_handler(port), path=path))
    # Every listener is up before the engine starts, so its first connection cannot race the shim.
    proc = await asyncio.create_subprocess_exec(*argv, env=dict(env))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The supervisor signals every process in the sandbox, the engine included; the shim itself
        # only ends when the engine does, so the engine can still report progress while shutting down.
        loop.add_signal_handler(sig, lambda: None)
    returncode = await proc.wait()
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    for port in inbound:
        with contextlib.suppress(OSError):
            os.unlink(f"{IN_DIR}/{port}")
    return returncode


def _parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="netshim", description="sandbox side of the Accord network shim")
    parser.add_argument("--env-file", required=True, help="JSON object: the engine's environment")
    parser.add_argument("--pdeathsig", action="store_true", help="die (SIGKILL) with the parent process")
    parser.add_argument("--out", action="append", default=[], metavar="PORT=NAME")
    parser.add_argument("--in", dest="inbound", action="append", default=[], type=int, metavar="PORT")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    ns.outbound = {}
    for item in ns.out:
        port, _, name = item.partition("=")
        ns.outbound[int(port)] = name
    if ns.argv and ns.argv[0] == "--":
        ns.argv = ns.argv[1:]
    if not ns.argv:
        parser.error("no engine command after --")
    return ns


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG (kept across exec): without bwrap, this ties the engine to the supervisor."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def main(args: Sequence[str] | None = None) -> None:
    ns = _parse_args(sys.argv[1:] if args is None else args)
    with open(ns.env_file, encoding="utf-8") as fh:
        env = {str(k): str(v) for k, v in json.load(fh).items()}
    if ns.pdeathsig:
        _die_with_parent()
    if not ns.outbound and not ns.inbound:
        try:  # nothing to bridge: become the engine (one process less, signals reach it directly)
            os.execvpe(ns.argv[0], ns.argv, env)
        except OSError as exc:
            print(f"accord sandbox: cannot start {ns.argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
            sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
    try:
        returncode = asyncio.run(_serve_in_sandbox(ns.outbound, ns.inbound, ns.argv, env))
    except OSError as exc:
        print(f"accord netshim: {exc}", file=sys.stderr, flush=True)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 125)
    if returncode < 0:  # mirror the engine's death by signal (bwrap then reports 128+N)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(-returncode, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), -returncode)
        returncode = 128 - returncode
    sys.exit(returncode)


if __name__ == "__main__":
    main()
