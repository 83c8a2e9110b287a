"""`accord node start`: run one domain's node in the foreground until a signal or a module failure.

Lifecycle (Temporal's worker and kopf's `run_tasks` are the models):
1. Refuse to start if a node already runs from this directory (its live `run/endpoints.json`; exit
   code 7).  Open the store (a failure is exit code 4 with the store URL named), seed what every node
   has (its own Domain object, the built-in AppImages), bind every port up front (a conflict is exit
   code 5 naming the port) so nothing half-starts.
2. Start the modules side by side in an `asyncio.TaskGroup`, each under a guard that turns a crash into a
   logged cause plus a node stop (exit code 6) instead of a silent half-dead node.  Once every module
   is ready, publish the ports actually bound (any may be configured as 0) in `run/endpoints.json`
   (`endpoints.py`), which the CLI and the SDK read.
3. On SIGTERM/SIGINT, ask every module to stop (reverse start order), wait up to
   `shutdown_grace_seconds`, then cancel what is left; a second signal cancels at once. The endpoints
   record is withdrawn and the store closed last. Engines are separate processes in their own
   sessions: they outlive a node restart and the task controller re-adopts them, so stopping the node
   never kills a running job.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import accord
from accord.api.app import create_app
from accord.controllers.inbox import Inbox
from accord.controllers.job import JobController
from accord.controllers.manager import ControllerManager
from accord.controllers.route import RouteController
from accord.controllers.task import TaskController
from accord.controllers.taskdirs import TaskDirSweeper
from accord.datamesh.flight import DataMeshService
from accord.datamesh.registry import ensure_default_source
from accord.datamesh.wire import TaskGrant
from accord.errors import AccordError
from accord.gateway import ANY_PEER, Gateway, ServiceRegistry
from accord.interop.client import CONTROL_SERVICE, PeerClient
from accord.interop.server import build_interop_app
from accord.node import endpoints
from accord.node.bootstrap import read_token
from accord.node.datamesh_access import resolve_task_token
from accord.node.exit_codes import HELP, ExitCode
from accord.node.modules import ApiModule, CallableModule, Module, PortInUse, bind_socket
from accord.node.seed import seed_store
from accord.runtimes.process import ProcessRuntime
from accord.services import Services
from accord.settings import NodeSettings
from accord.store.base import Store
from accord.store.factory import open_store

log = logging.getLogger("accord.node")


@dataclass
class NodeState:
    """What `GET /v1/node` reports about this process."""

    settings: NodeSettings
    started_at: float = field(default_factory=time.time)
    modules: dict[str, str] = field(default_factory=dict)
    isolation: str = ""
    api_port: int = 0
    datamesh_port: int = 0
    gateway: Gateway | None = None

    def info(self, revision: int) -> dict[str, Any]:
        return {
            "domain": self.settings.domain,
            "version": accord.__version__,
            "protocol_version": accord.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "store": redact_url(self.settings.effective_store_url),
            "revision": revision,
            "modules": dict(self.modules),
            "isolation": self.isolation,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "api": f"http://{self.settings.api_host}:{self.api_port}",
            "gateway": (f"{self.settings.gateway_host}:{self.gateway.public_port}" if self.gateway else ""),
            "egress": f"127.0.0.1:{self.gateway.egress_port}" if self.gateway else "",
            "datamesh": f"127.0.0.1:{self.datamesh_port}" if self.datamesh_port else "",
        }


def redact_url(url: str) -> str:
    """The store URL without its password (never log or return credentials)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def configure_logging(settings: NodeSettings) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    file_handler = logging.FileHandler(settings.logs_dir / "node.log")
    file_handler.setFormatter(fmt)
    root.addHandler(file_handler)


def run_node(settings: NodeSettings) -> int:
    """Run the node in the foreground; returns the process exit code."""
    configure_logging(settings)
    try:
        code = asyncio.run(serve(settings))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch this
        code = ExitCode.OK
    if code != ExitCode.OK:
        log.error("node %s stopped: exit code %d (%s)", settings.domain, int(code), HELP[code])
    return int(code)


async def serve(settings: NodeSettings, *, stop: asyncio.Event | None = None) -> ExitCode:
    """Run every module until `stop` is set (or a signal arrives); the exit code says why it ended."""
    stop = stop or asyncio.Event()
    state = NodeState(settings)
    running = endpoints.read_live(settings)
    if running is not None and running.pid != os.getpid():
        log.error(
            "a node already runs from %s (pid %d, API %s); stop it first",
            settings.dir,
            running.pid,
            running.api_url,
        )
        return ExitCode.ALREADY_RUNNING
    lock = endpoints.lock_node_dir(settings)
    if lock is None:
        log.error("another node is starting or running from %s (it holds run/node.lock)", settings.dir)
        return ExitCode.ALREADY_RUNNING
    try:
        return await _serve_locked(settings, state, stop)
    finally:
        os.close(lock)


async def _serve_locked(settings: NodeSettings, state: NodeState, stop: asyncio.Event) -> ExitCode:
    try:
        store = open_store(settings.effective_store_url, poll_interval=settings.watch_poll_seconds)
    except AccordError as exc:
        log.error("cannot open the store %s: %s", redact_url(settings.effective_store_url), exc.message)
        return ExitCode.STORE_UNAVAILABLE
    try:
        try:
            await seed_store(store, settings)
            await ensure_default_source(store, settings)
        except AccordError as exc:
            log.error("cannot use the store %s: %s", redact_url(settings.effective_store_url), exc.message)
            return ExitCode.STORE_UNAVAILABLE
        return await _serve_with_store(settings, store, state, stop)
    finally:
        await store.close()


async def _serve_with_store(
    settings: NodeSettings, store: Store, state: NodeState, stop: asyncio.Event
) -> ExitCode:
    try:
        api_sock = bind_socket(settings.api_host, settings.api_port, "local API")
    except PortInUse as exc:
        log.error("%s", exc)
        return ExitCode.PORT_IN_USE
    state.api_port = int(api_sock.getsockname()[1])
    # From here on the API port is the bound one (engines are told it as their node API).
    settings = settings.model_copy(update={"api_port": state.api_port})

    async def resolve(token: str) -> TaskGrant | None:
        return await resolve_task_token(store, settings, token)

    datamesh = DataMeshService(store, settings, resolve)
    try:
        await datamesh.start()
    except OSError as exc:
        api_sock.close()
        log.error("%s", exc)
        return ExitCode.PORT_IN_USE
    state.datamesh_port = datamesh.port
    gateway_ref: list[Gateway] = []

    def node_services() -> dict[str, tuple[str, int]]:
        """Where the node's services listen now (a restarted node re-bridges adopted engines to them)."""
        services = {"api": ("127.0.0.1", state.api_port), "datamesh": ("127.0.0.1", datamesh.port)}
        if gateway_ref:
            services["egress"] = ("127.0.0.1", gateway_ref[0].egress_port)
        return services

    runtime = ProcessRuntime(
        settings, node_env={"ACCORD_DATAMESH": datamesh.location}, node_services=node_services
    )
    state.isolation = await runtime.probe_isolation()
    key_pem = settings.key_path.read_bytes()
    cert_pem = settings.cert_path.read_bytes()
    registry = ServiceRegistry(settings.domain)
    gateway = Gateway(settings, store, registry, key_pem=key_pem, cert_pem=cert_pem)
    gateway_ref.append(gateway)
    state.gateway = gateway
    # Interop (cross-domain jobs): messages to peers leave through the gateway's egress port; the node's
    # control API listens on a loopback port registered in the gateway as `accord.<domain>.svc`.
    peers = PeerClient(settings.domain, lambda: gateway.egress_port, node_secret=gateway.node_secret)
    try:
        interop_sock = bind_socket("127.0.0.1", 0, "interop API")
    except PortInUse as exc:
        log.error("%s", exc)
        return ExitCode.PORT_IN_USE
    registry.register(CONTROL_SERVICE, int(interop_sock.getsockname()[1]), allowed={ANY_PEER})
    services = Services.build(store=store, settings=settings, node_info=_info_fn(store, state), peers=peers)
    app = create_app(services, settings, read_token(settings))
    task_controller = TaskController(store, settings, runtime, peers=peers, registry=registry)
    interop = ApiModule(
        build_interop_app(Inbox(store, settings, task_controller.party), settings.domain), interop_sock
    )
    interop.name = "interop"
    manager = ControllerManager(
        store,
        [
            JobController(store, settings, peers=peers),
            task_controller,
            RouteController(
                store,
                settings,
                key_pem=key_pem,
                cert_pem=cert_pem,
                probe_interval=settings.route_probe_seconds,
            ),
        ],
        settings,
    )
    sweeper = TaskDirSweeper(store, settings, runtime, lock=task_controller.party.lock)
    modules: list[Module] = [
        CallableModule("gateway", gateway.run, ready=gateway.ready),
        datamesh,
        interop,
        CallableModule("controllers", manager.run),
        CallableModule("retention", sweeper.run),
        ApiModule(app, api_sock),
    ]

    async def publish() -> None:
        record = endpoints.this_process(
            settings,
            api_port=state.api_port,
            gateway_port=gateway.public_port,
            egress_port=gateway.egress_port,
            datamesh_port=datamesh.port,
        )
        await asyncio.to_thread(endpoints.publish, settings, record)

    try:
        return await supervise(settings, modules, state, stop, on_ready=publish)
    finally:
        endpoints.withdraw(settings)
        await runtime.close()  # host bridges and held ports; engines keep running and are re-adopted


def _info_fn(store: Store, state: NodeState) -> Callable[[], Any]:
    async def info() -> dict[str, Any]:
        return state.info(await store.revision())

    return info


async def supervise(
    settings: NodeSettings,
    modules: list[Module],
    state: NodeState,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> ExitCode:
    """Run modules in a TaskGroup; the first crash or a signal stops them all, in reverse order.

    `on_ready` runs once every module is ready (the daemon publishes its endpoints there)."""
    failures: list[str] = []
    port_conflicts: list[str] = []
    loop = asyncio.get_running_loop()
    signals_seen: list[int] = []

    def on_signal(sig: int) -> None:
        signals_seen.append(sig)
        if len(signals_seen) == 1:
            log.info("received %s: stopping gracefully", signal.Signals(sig).name)
            stop.set()
        else:
            log.warning("second signal: cancelling modules now")
            for task in tasks:
                task.cancel()

    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    async def guard(module: Module) -> None:
        state.modules[module.name] = "starting"
        try:
            await module.run()
        except asyncio.CancelledError:
            state.modules[module.name] = "stopped"
            raise
        except OSError as exc:
            state.modules[module.name] = "crashed"
            if exc.errno == errno.EADDRINUSE:
                log.error("module %s cannot listen: %s", module.name, exc)
                port_conflicts.append(module.name)
            else:
                log.exception("module %s crashed: %r", module.name, exc)
            failures.append(f"{module.name}: {exc!r}")
            stop.set()
            return
        except BaseException as exc:  # a crashed module stops the node with its cause
            state.modules[module.name] = "crashed"
            log.exception("module %s crashed: %r", module.name, exc)
            failures.append(f"{module.name}: {exc!r}")
            stop.set()
            return
        state.modules[module.name] = "stopped"
        if not stop.is_set():
            log.error("module %s stopped unexpectedly", module.name)
            failures.append(f"{module.name}: stopped unexpectedly")
            stop.set()

    async def announce_ready() -> None:
        await asyncio.gather(*(m.ready.wait() for m in modules))
        for m in modules:
            state.modules[m.name] = "running"
        if on_ready is not None:
            try:
                await on_ready()
            except Exception:  # the node serves on; only clients that need the record cannot find it
                log.exception("cannot publish the node's endpoints in %s", settings.endpoints_path)
        log.info(
            "node %s ready: api http://%s:%d (pid %d)",
            settings.domain,
            settings.api_host,
            state.api_port,
            os.getpid(),
        )

    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.TaskGroup() as group:
            for module in modules:
                tasks.append(group.create_task(guard(module), name=f"module:{module.name}"))
            ready_task = group.create_task(announce_ready(), name="ready")
            await stop.wait()
            ready_task.cancel()
            for module in reversed(modules):
                module.request_stop()
            _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_seconds)
            for task in pending:
                log.warning("module %s did not stop in time: cancelling", task.get_name())
                task.cancel()
    finally:
        for installed_sig in installed:
            loop.remove_signal_handler(installed_sig)
    if port_conflicts:
        return ExitCode.PORT_IN_USE
    return ExitCode.MODULE_CRASHED if failures else ExitCode.OK
