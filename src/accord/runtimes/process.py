"""RunP: each task's engine is a child process with its own work dir and log, run "with the least it needs".

Isolation.  `detect_isolation()` (once per process, cached) finds what this machine allows and every
engine gets all of it (`sandbox.py` holds the threat model):

- bubblewrap works: a sandbox with a read-only root, the node directory hidden (domain key, API token,
  store), private /tmp, own pid/ipc/uts namespaces, uid 65534 without capabilities (node as root), and a
  network namespace with only a loopback.  The network shim (`netshim.py`) bridges exactly the node
  services named in the engine's env -- `ACCORD_EGRESS` (the gateway's egress: peers), `ACCORD_NODE_API`
  (progress, with the one-time task token) and `ACCORD_DATAMESH` -- outbound, and the task's allocated
  ports inbound (Local-scope ones stay inside).  The host half (`HostBridge`) runs in this process:
  started before the engine, stopped when it ends, and started again for an engine adopted after a node
  restart.
- no bubblewrap: plain child processes; cgroups (memory, CPU quota, pids) and prlimit as available, and
  uid 65534 when it can reach the task dir.  `isolation()` says exactly what is in force and is shown
  by `accord node status`; limits that cannot be enforced are written at the top of the engine log.

Limits: the AppImage's `resources` (Kubernetes quantities) over the runtime's defaults (`limits.py`).

Layout of `<settings.tasks_dir>/<task>/` (the engine's work dir, `ACCORD_WORK_DIR`):
- `engine.log`: the engine's stdout and stderr, kept after it ends (appended across runs);
- the rendered config files and whatever the engine writes;
- `.sandbox/`: the sandbox's control dir and, in `.sandbox/run/`, the launcher's bookkeeping
  (`launch.json`, `process.json`, `exit.json`; see `launcher.py`).  Both belong to the node: the engine
  runs as another uid in a root-owned sticky directory (or sees `.sandbox` read-only), so it can neither
  forge these records (a forged pid would make the node `killpg` whatever group it names) nor replace
  the log.  A new run empties the directory first, never following links (`taskfiles.py`).

Why a launcher in between, and a new session: the node may die (SIGKILL, OOM, a crash) while engines
run.  Engines run in their own session, so they survive it, under a small stdlib-only launcher that
writes their exit status.  A restarted node answers `poll` from files alone (`records.py`): an exit file
means Exited; a live launcher whose start time matches the recorded one means Running (re-adopted; a
reused pid has another start time); neither means Lost, and the remains of a lost run are removed.
`stop` signals the launcher's process group (launcher and sandbox supervisor, which passes SIGTERM to
every process inside), and after the grace period SIGKILLs the whole tree and removes the cgroups.
The launcher is started with a minimal env, never the engine's: the engine's env (with its token)
reaches only the engine, through a 0600 file.

Ports: `allocate_ports` picks free loopback ports, never one of the node's own services.  Sandboxed, it
also *holds* each port (a listening socket; early connections wait in its backlog) until the host
bridge serves it, so no other program can take it in between; without a sandbox the engine must bind
them itself (a short window remains).

Exit notices: the launcher of every engine started (or adopted) is watched through a pidfd on the
event loop, and `on_exit` listeners (the task controller) are told the moment it ends, so a finished
task is seen at once instead of at the next poll.  A notice is only a wake-up: the exit record is
what `poll` reports, and without pidfds (old kernels) polling alone still finds every exit.

Exit status: exit code 0 is success; another code is a *failure* ("engine exited with code 3: <log
tail>"); a signal is a *crash* ("engine crashed (killed by signal SIGSEGV)"), and an OOM kill in the
engine's cgroup reads "engine killed: memory limit 64 MiB exceeded" (`EngineStatus.describe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from accord.errors import AccordError, ErrorCode, InvalidArgument, Unavailable
from accord.names import DNS_LABEL
from accord.resources.appimage import AppPort
from accord.resources.job import AllocatedPort
from accord.runtimes import launcher
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec
from accord.runtimes.cgroups import existing_groups
from accord.runtimes.contract import contract_variables, render_config_files
from accord.runtimes.engines import engine_read_only_paths, engines_dir
from accord.runtimes.limits import DEFAULT_LIMITS, EngineLimits, limits_for
from accord.runtimes.netshim import BridgeError, HostBridge, NetworkPolicy
from accord.runtimes.records import LOG_FILE, RUN_DIR, engine_status
from accord.runtimes.sandbox import (
    NOBODY,
    Isolation,
    PreparedSandbox,
    SandboxError,
    SandboxSpec,
    detect_isolation,
    prepare_sandbox,
    unreachable_paths,
)
from accord.runtimes.supervisor import sandbox_processes
from accord.runtimes.taskfiles import (
    bridge_env,
    env_ports,
    log_tail,
    open_log,
    read_json,
    reset_task_dir,
    safe_read_only_paths,
)
from accord.settings import NodeSettings

__all__ = ["LOG_FILE", "RUN_DIR", "ProcessRuntime", "log_tail"]

log = logging.getLogger(__name__)

_POLL_STEP = 0.05
_START_TIMEOUT = 10.0
_KILL_WAIT = 5.0


def _argv_dirs(argv: Sequence[str]) -> list[Path]:
    """Directories of the program files an AppImage's command names (e.g. `python /opt/x/engine.py`):
    they are shown read-only in the sandbox even when they sit under a hidden path such as /tmp."""
    return [Path(a).parent for a in argv[1:] if a.startswith("/") and Path(a).is_file()]


class ProcessRuntime:
    """RunP; see the module docstring."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        python: str | None = None,
        node_env: Mapping[str, str] | None = None,
        isolation: Isolation | None = None,
        limits: EngineLimits | None = None,
        engine_paths: Sequence[Path] | None = None,
        node_services: Callable[[], Mapping[str, tuple[str, int]]] | None = None,
    ) -> None:
        """`node_env`: node services every engine may use (e.g. `ACCORD_DATAMESH`); `isolation`: what to
        enforce (default: what `detect_isolation()` finds); `limits`: defaults for AppImages that state no
        `resources`; `engine_paths`: directories of engine environments to show read-only in the sandbox
        (default: the engines dir of `accord engine install`); `node_services`: where the node's services
        listen now, by bridge name ("api", "egress", "datamesh") -- an engine adopted after a restart
        keeps the ports its env names, and its bridge leads them to these (default: where they were)."""
        self._settings = settings
        self._node_env = dict(node_env or {})
        self._root = settings.tasks_dir
        self._python = python or sys.executable
        self._iso = isolation
        self._limits = limits or DEFAULT_LIMITS
        self._engine_paths = list(engine_paths) if engine_paths is not None else [engines_dir()]
        self._node_services = node_services
        self._reserved: dict[str, list[int]] = {}
        self._held: dict[str, dict[int, socket.socket]] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._bridges: dict[str, tuple[str, HostBridge]] = {}  # task -> (uid of the run, its bridge)
        self._locks: dict[str, asyncio.Lock] = {}
        self._finished: set[tuple[str, str]] = set()  # (task, uid) runs whose sandbox was cleaned up
        self._exit_listeners: list[Callable[[str], None]] = []
        self._exit_watches: dict[str, tuple[int, int]] = {}  # task -> (launcher pid, its pidfd)

    # -- isolation ------------------------------------------------------------------------------

    def _isolation(self) -> Isolation:
        if self._iso is None:
            self._iso = detect_isolation()  # cached per process; blocking (a trial bwrap run)
        return self._iso

    async def probe_isolation(self) -> str:
        """Detect what the machine allows without blocking the event loop; returns `isolation()`."""
        if self._iso is None:
            self._iso = await asyncio.to_thread(detect_isolation)
        return self.isolation()

    def isolation(self) -> str:
        iso = self._isolation()
        parts = [iso.describe()]
        if not iso.sandboxed and iso.as_root:
            if iso.setpriv is None:
                parts.append("engines run as root (setpriv not found)")
            elif blocked := self._unreachable():
                parts.append(
                    f"engines run as ROOT: uid {NOBODY} cannot reach {', '.join(map(str, blocked))} "
                    "(install bubblewrap, or make those directories o+x)"
                )
            else:
                parts.append(f"engines run as uid {NOBODY}, all engines share it")
        parts.append(f"engine limits by default: {self._limits.describe()}")
        return "; ".join(parts)

    def _unreachable(self) -> list[Path]:
        try:
            existing = next(p for p in (self._root, *self._root.parents) if p.exists())
            return unreachable_paths(existing)
        except (OSError, StopIteration) as exc:
            log.debug("cannot check what uid %d reaches: %s", NOBODY, exc)
            return [self._root]

    # -- paths ----------------------------------------------------------------------------------

    def work_dir(self, task: str) -> Path:
        if not DNS_LABEL.match(task):
            raise InvalidArgument(f"task name {task!r} is not a DNS label", code=ErrorCode.TASK_INVALID)
        return self._root / task

    def log_path(self, task: str) -> Path:
        return self.work_dir(task) / LOG_FILE

    def _run_dir(self, task: str) -> Path:
        return self.work_dir(task) / RUN_DIR

    # -- ports ----------------------------------------------------------------------------------

    def _service_ports(self) -> set[int]:
        s = self._settings
        return {s.api_port, s.egress_port, s.datamesh_port, *env_ports(self._node_env)} - {0}

    async def allocate_ports(self, task: str, ports: Sequence[AppPort]) -> list[AllocatedPort]:
        if task in self._reserved:
            await self.release(task)
        hold = (await asyncio.to_thread(self._isolation)).sandboxed
        taken = {p for reserved in self._reserved.values() for p in reserved} | self._service_ports()
        chosen: list[int] = []
        held: dict[int, socket.socket] = {}
        try:
            for _ in ports:
                for _attempt in range(64):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    if hold:  # like asyncio's servers, so a restarted node can listen here again at once
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("127.0.0.1", 0))
                    number = int(sock.getsockname()[1])
                    if number not in taken and number not in chosen:
                        chosen.append(number)
                        if hold:  # listening: no other socket can bind it, SO_REUSEADDR or not
                            sock.listen(128)
                            held[number] = sock
                        else:
                            sock.close()
                        break
                    sock.close()
                else:
                    raise Unavailable("no free loopback port found for the task's engine")
        except BaseException:
            for sock in held.values():
                sock.close()
            raise
        self._reserved[task] = chosen
        if held:
            self._held[task] = held
        return [
            AllocatedPort(name=p.name, port=n, scope=p.scope, protocol=p.protocol)
            for p, n in zip(ports, chosen, strict=True)
        ]

    async def release(self, task: str) -> None:
        self._reserved.pop(task, None)
        for sock in self._held.pop(task, {}).values():
            sock.close()

    # -- start ----------------------------------------------------------------------------------

    async def start(self, launch: LaunchSpec) -> EngineStatus:
        current = await self.poll(launch.task, launch.uid)
        if current.state is not EngineState.NOT_STARTED:
            return current  # idempotent: never start a second engine for the same task run
        # The start cannot be interrupted half-way (an engine without a record, or a record without its
        # bridge); if we are cancelled meanwhile (the node is stopping), finish it anyway, so the engine
        # is on record and the caller can stop or adopt it.
        job = asyncio.ensure_future(self._start(launch))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await job
            raise

    async def _start(self, launch: LaunchSpec) -> EngineStatus:
        task, uid = launch.task, launch.uid
        previous = self._poll(task, None)
        if previous.state is EngineState.RUNNING:  # a run of an earlier task of this name: end it first
            log.warning("task %s: stopping the engine of a previous run before starting uid %s", task, uid)
            await self.stop(task, grace=5.0)
        await self._close_bridge(task)
        iso = await asyncio.to_thread(self._isolation)
        held = self._held.pop(task, {})
        try:
            prepared = await asyncio.to_thread(self._prepare, launch, iso)
        except BaseException:
            for sock in held.values():
                sock.close()
            raise
        try:
            if prepared.needs_bridge:
                bridge = prepared.host_bridge(listen_sockets=held)
                try:
                    await bridge.start()
                except BridgeError as exc:
                    raise Unavailable(f"cannot bridge the engine's network: {exc}") from exc
                self._bridges[task] = (uid, bridge)
            else:
                for sock in held.values():
                    sock.close()
            pid = await asyncio.to_thread(self._spawn, launch, prepared)
        except BaseException:
            await self._close_bridge(task)
            await asyncio.to_thread(prepared.cleanup)
            raise
        self._watch_exit(task, pid)
        # Return once the launcher has recorded itself (or ended), so the on-disk record a restarted node
        # relies on exists before the caller writes "Running".
        marker_path = self._run_dir(task) / launcher.PROCESS_FILE
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
        while True:
            marker = read_json(marker_path)
            child = self._children.get(task)
            if (marker is not None and marker.get("uid") == uid) or child is None or child.poll() is not None:
                return await self.poll(task, uid)
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"the launcher (pid {pid}) of task {task!r} did not report in time")
            await asyncio.sleep(_POLL_STEP)

    def _build_env(self, launch: LaunchSpec, work_dir: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(work_dir),
            "PYTHONUNBUFFERED": "1",
        }
        env.update(launch.app_image.spec.env)
        env.update(self._node_env)
        env.update(launch.extra_env)
        env.update(self._variables(launch, work_dir))
        return env

    def _variables(self, launch: LaunchSpec, work_dir: Path) -> dict[str, str]:
        return contract_variables(
            task=launch.task,
            domain=launch.domain,
            input_config=launch.input_config,
            parties=launch.parties,
            self_party_index=launch.self_party_index,
            app_image=launch.app_image,
            ports=launch.ports,
            node_api=launch.node_api,
            token=launch.token,
            work_dir=work_dir,
        )

    def _prepare(self, launch: LaunchSpec, iso: Isolation) -> PreparedSandbox:
        """Empty the work dir, render the config files, set up the sandbox (blocking: run in a thread)."""
        spec = launch.app_image.spec
        argv = [*spec.command, *spec.args]
        if not argv:
            raise InvalidArgument(
                f"AppImage {launch.app_image.meta.name!r} has no command; RunP needs spec.command",
                code=ErrorCode.APPIMAGE_INVALID,
            )
        limits = limits_for(spec.resources, self._limits, launch.app_image.meta.name)
        work_dir = self.work_dir(launch.task)
        env = self._build_env(launch, work_dir)
        template_vars = {**spec.env, **self._variables(launch, work_dir)}
        with contextlib.suppress(SandboxError):  # a run that never started, or whose supervisor died
            PreparedSandbox.load(work_dir).cleanup()
        leaf = re.compile(rf"{re.escape(launch.domain)}\.{re.escape(launch.task)}-[0-9a-f]{{8}}")
        for stale in existing_groups(iso.cgroups, lambda name: leaf.fullmatch(name) is not None):
            stale.remove()  # a node killed between creating this task's groups and recording them
        reset_task_dir(work_dir, keep={LOG_FILE})
        render_config_files(launch.app_image, template_vars, work_dir)
        os.close(open_log(work_dir / LOG_FILE))  # exists before the sandbox protects it
        if iso.sandboxed:
            env, outbound = bridge_env(env)
            # Local-scope ports are the engine's own business: they stay inside its network namespace.
            inbound = [p.port for p in launch.ports if p.scope != "Local"]
            network = NetworkPolicy(outbound=outbound, inbound=inbound)
        else:
            network = NetworkPolicy(mode="host")  # nothing to bridge: isolation() says it is shared
        try:
            return prepare_sandbox(
                SandboxSpec(
                    task_dir=work_dir,
                    argv=argv,
                    env=env,
                    node_dir=self._settings.dir,
                    memory_bytes=limits.memory_bytes,
                    cpu_cores=limits.cpu_cores,
                    pids_max=limits.pids,
                    open_files=limits.open_files,
                    read_only_paths=safe_read_only_paths(
                        [
                            *self._engine_paths,
                            *engine_read_only_paths(launch.app_image),
                            *_argv_dirs(argv),
                        ],
                        self._settings.dir,
                    ),
                    network=network,
                    # Unique per run: nodes of several domains may share a machine (and a task name).
                    cgroup_name=f"{launch.domain}.{launch.task}-{uuid.uuid4().hex[:8]}",  # see `leaf`
                    protected=(LOG_FILE,),
                ),
                iso,
            )
        except AccordError:
            raise
        except OSError as exc:
            raise Unavailable(f"cannot set up the engine's sandbox: {exc}") from exc

    def _spawn(self, launch: LaunchSpec, prepared: PreparedSandbox) -> int:
        spec = launch.app_image.spec
        work_dir = self.work_dir(launch.task)
        run_dir = self._run_dir(launch.task)
        run_dir.mkdir(mode=0o755)
        limits = limits_for(spec.resources, self._limits, launch.app_image.meta.name)
        launcher.write_json_atomic(
            run_dir / launcher.LAUNCH_FILE,
            {
                "uid": launch.uid,
                "argv": prepared.argv,
                "cwd": str(work_dir),
                "engine": [*spec.command, *spec.args],
                "limits": limits.to_dict(),
                "bridged": prepared.needs_bridge,
            },
        )
        log_fd = open_log(work_dir / LOG_FILE)
        try:
            if prepared.warnings:
                note = f"accord runtime: NOT enforced for this engine: {'; '.join(prepared.warnings)}\n"
                os.write(log_fd, note.encode())
            child = subprocess.Popen(
                [self._python, "-I", launcher.__file__, str(run_dir)],
                cwd=work_dir,
                env=prepared.env,  # minimal; the engine's env is in .sandbox/env.json (0600)
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log_fd)
        self._children[launch.task] = child
        return child.pid

    # -- poll -----------------------------------------------------------------------------------

    def _poll(self, task: str, uid: str | None) -> EngineStatus:
        child = self._children.get(task)
        if child is not None and child.poll() is not None:
            self._children.pop(task, None)  # reaped; the exit record (if any) tells the rest
        return engine_status(self.work_dir(task), uid, child)

    async def poll(self, task: str, uid: str | None = None) -> EngineStatus:
        status = self._poll(task, uid)
        if status.state is EngineState.RUNNING:
            await self._ensure_bridge(task)
            if status.pid is not None:
                self._watch_exit(task, status.pid)  # an adopted engine: no-op when already watched
        elif status.state in (EngineState.EXITED, EngineState.LOST):
            await self._finish(task)
        return status

    # -- exit notices ---------------------------------------------------------------------------

    def on_exit(self, listener: Callable[[str], None]) -> None:
        self._exit_listeners.append(listener)

    def _watch_exit(self, task: str, pid: int) -> None:
        """Watch the launcher `pid` of `task` through a pidfd (readable once the process ended)."""
        watched = self._exit_watches.get(task)
        if watched is not None:
            if watched[0] == pid:
                return
            self._unwatch_exit(task)
        if pid <= 1 or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # already gone (its exit is for poll to find), or no pidfd support here
            return
        loop = asyncio.get_running_loop()
        self._exit_watches[task] = (pid, fd)
        loop.add_reader(fd, self._exited, task, fd)
        # The pid might have been reused between the record and the open: then it is not our launcher.
        current = self._poll(task, None)
        if current.state is not EngineState.RUNNING or current.pid != pid:
            self._exited(task, fd)

    def _exited(self, task: str, fd: int) -> None:
        watched = self._exit_watches.get(task)
        if watched is None or watched[1] != fd:
            return
        self._unwatch_exit(task)
        for listener in self._exit_listeners:
            try:
                listener(task)
            except Exception:
                log.exception("task %s: an exit listener failed", task)

    def _unwatch_exit(self, task: str) -> None:
        watched = self._exit_watches.pop(task, None)
        if watched is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # the loop may be closed already
            asyncio.get_running_loop().remove_reader(watched[1])
        os.close(watched[1])

    # -- the host bridge and the sandbox's remains --------------------------------------------------

    def _lock(self, task: str) -> asyncio.Lock:
        return self._locks.setdefault(task, asyncio.Lock())

    async def _ensure_bridge(self, task: str) -> None:
        """A running sandboxed engine has its host bridge (again, after a node restart)."""
        launch = read_json(self._run_dir(task) / launcher.LAUNCH_FILE) or {}
        uid = str(launch.get("uid", ""))
        if not launch.get("bridged") or self._bridges.get(task, ("", None))[0] == uid:
            return
        async with self._lock(task):
            if self._bridges.get(task, ("", None))[0] == uid:
                return
            try:
                prepared = PreparedSandbox.load(self.work_dir(task))
                targets = dict(prepared.network.outbound)
                if self._node_services is not None:
                    now = self._node_services()
                    targets.update({name: now[name] for name in targets if name in now})
                bridge = HostBridge(
                    prepared.task_dir, targets, prepared.network.inbound, sandbox_uid=prepared.sandbox_uid
                )
                await bridge.start()
            except (SandboxError, BridgeError) as exc:
                log.warning("task %s: cannot bridge the adopted engine's network (will retry): %s", task, exc)
                return
            self._bridges[task] = (uid, bridge)
            log.info("task %s: host bridge started for the adopted engine", task)

    async def _close_bridge(self, task: str) -> None:
        entry = self._bridges.pop(task, None)
        if entry is not None:
            await entry[1].close()

    async def _finish(self, task: str) -> None:
        """The engine ended (or is lost): close its bridge and remove what is left of its sandbox."""
        await self._close_bridge(task)
        launch = read_json(self._run_dir(task) / launcher.LAUNCH_FILE) or {}
        key = (task, str(launch.get("uid", "")))
        if key in self._finished:
            return
        self._finished.add(key)
        with contextlib.suppress(SandboxError):
            prepared = PreparedSandbox.load(self.work_dir(task))
            problems = await asyncio.to_thread(prepared.cleanup)
            if problems:
                log.warning("task %s: sandbox cleanup left %s", task, "; ".join(problems))

    async def close(self) -> None:
        """Stop serving bridges and release held ports (node shutdown); engines keep running."""
        for task in list(self._exit_watches):
            self._unwatch_exit(task)
        for task in list(self._bridges):
            await self._close_bridge(task)
        for task in list(self._held):
            await self.release(task)

    # -- wait, stop, list -----------------------------------------------------------------------

    async def wait(self, task: str, timeout: float, uid: str | None = None) -> EngineStatus:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.poll(task, uid)
            if status.state is not EngineState.RUNNING or loop.time() >= deadline:
                return status
            await asyncio.sleep(_POLL_STEP)

    async def stop(self, task: str, grace: float = 5.0, uid: str | None = None) -> EngineStatus:
        status = self._poll(task, uid)
        if status.state is not EngineState.RUNNING or status.pid is None or status.pid <= 1:
            return await self.poll(task, uid)
        pgid = status.pid  # the launcher leads its own session and process group
        self._signal_group(pgid, signal.SIGTERM)
        status = await self.wait(task, grace, uid)
        if status.state is not EngineState.RUNNING:
            return status
        # The last resort: the launcher's group and every process below it (the sandbox dies with its
        # supervisor; without bwrap the engine's own children would otherwise be left behind).
        tree = await asyncio.to_thread(sandbox_processes, pgid, via_bwrap=False)
        self._signal_group(pgid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        status = await self.wait(task, _KILL_WAIT, uid)
        if status.state is EngineState.LOST:
            # Killed together with its launcher: record the outcome so later polls agree.
            run_dir = self._run_dir(task)
            launch = read_json(run_dir / launcher.LAUNCH_FILE) or {}
            launcher.write_json_atomic(
                run_dir / launcher.EXIT_FILE,
                {
                    "uid": launch.get("uid", ""),
                    "exit_code": None,
                    "signal": int(signal.SIGKILL),
                    "error": f"stopped by the node (no exit within {grace:g} s of SIGTERM)",
                },
            )
            status = await self.poll(task, uid)
        return status

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def running_tasks(self) -> list[str]:
        if not self._root.is_dir():
            return []
        names = []
        for entry in sorted(self._root.iterdir()):
            if (
                entry.is_dir()
                and DNS_LABEL.match(entry.name)
                and self._poll(entry.name, None).state is EngineState.RUNNING
            ):
                names.append(entry.name)
                # The controller asks this first after a node restart: bridge adopted engines at once,
                # so their inbound ports are taken again before new tasks get ports.
                await self._ensure_bridge(entry.name)
        return names
