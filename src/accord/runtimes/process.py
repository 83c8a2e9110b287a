"""RunP, basic: each task's engine is a child process with its own work dir, log and env.

Layout of `<settings.tasks_dir>/<task>/`: the rendered config files, whatever the engine writes (results),
`engine.log` (its stdout and stderr, kept after it ends), and the launcher's bookkeeping files
(`launch.json`, `process.json`, `exit.json`; see `launcher.py`).

Why a launcher in between, and a new session: the node may die (SIGKILL, OOM, a crash) while engines
run.  Engines run in their own session, so they survive it, under a small stdlib-only launcher that
writes their exit status to `exit.json`.  A restarted node then answers `poll` from files alone: an exit
file means Exited; a live launcher whose start time matches the recorded one means Running (re-adopted;
a reused pid has another start time); neither means Lost.  `stop` signals the whole process group
(launcher and engine), SIGTERM first and SIGKILL after the grace period.

What is *not* here yet: a sandbox (bubblewrap: read-only root, private /tmp, loopback only) and
resource limits (cgroups, prlimit); `isolation()` says so.  The env is built from scratch (PATH, LANG,
HOME = the task dir, the AppImage env, then the engine-contract variables, which win), never copied from
the node, so the node's API token and the domain key never reach an engine.

Ports: `allocate_ports` asks the OS for free loopback ports and remembers them per task so two tasks of
this node are never handed the same one; the engine must bind them itself (there is a short window in
which another program could take a port; a sandboxed runtime with its own network namespace closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accord.errors import ErrorCode, InvalidArgument, Unavailable
from accord.names import DNS_LABEL
from accord.resources.appimage import AppPort
from accord.resources.job import AllocatedPort
from accord.runtimes import launcher
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec
from accord.runtimes.contract import contract_variables, render_config_files
from accord.settings import NodeSettings

LOG_FILE = "engine.log"
_POLL_STEP = 0.05
_START_TIMEOUT = 10.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, Z ...), or None if /proc has no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[0]


def log_tail(path: Path, lines: int = 3, max_chars: int = 400) -> str:
    """The last non-empty lines of a log, joined with ' | ' (for a status message)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(tail)
    return joined[-max_chars:]


class ProcessRuntime:
    """RunP without a sandbox; see the module docstring."""

    def __init__(self, settings: NodeSettings, *, python: str | None = None) -> None:
        self._settings = settings
        self._root = settings.tasks_dir
        self._python = python or sys.executable
        self._reserved: dict[str, list[int]] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def isolation(self) -> str:
        return "none: plain child processes in their own session (no sandbox, no resource limits)"

    def work_dir(self, task: str) -> Path:
        if not DNS_LABEL.match(task):
            raise InvalidArgument(f"task name {task!r} is not a DNS label", code=ErrorCode.TASK_INVALID)
        return self._root / task

    def log_path(self, task: str) -> Path:
        return self.work_dir(task) / LOG_FILE

    # -- ports ----------------------------------------------------------------------------------

    async def allocate_ports(self, task: str, ports: Sequence[AppPort]) -> list[AllocatedPort]:
        if task in self._reserved:
            await self.release(task)
        taken = {p for reserved in self._reserved.values() for p in reserved}
        chosen: list[int] = []
        for _ in ports:
            for _attempt in range(64):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", 0))
                    number = int(sock.getsockname()[1])
                if number not in taken and number not in chosen:
                    chosen.append(number)
                    break
            else:
                raise Unavailable("no free loopback port found for the task's engine")
        self._reserved[task] = chosen
        return [
            AllocatedPort(name=p.name, port=n, scope=p.scope, protocol=p.protocol)
            for p, n in zip(ports, chosen, strict=True)
        ]

    async def release(self, task: str) -> None:
        self._reserved.pop(task, None)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, launch: LaunchSpec) -> EngineStatus:
        current = await self.poll(launch.task, launch.uid)
        if current.state is not EngineState.NOT_STARTED:
            return current  # idempotent: never start a second engine for the same task run
        # The spawn runs in a thread and cannot be interrupted; if we are cancelled meanwhile (the node is
        # stopping), wait for it anyway, so the engine is on record and the caller can stop or adopt it.
        spawn = asyncio.ensure_future(asyncio.to_thread(self._spawn, launch))
        try:
            pid = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await spawn
            raise
        # Return once the launcher has recorded itself (or ended), so the on-disk record a restarted node
        # relies on exists before the caller writes "Running".
        marker_path = self.work_dir(launch.task) / launcher.PROCESS_FILE
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
        while True:
            marker = _read_json(marker_path)
            child = self._children.get(launch.task)
            if (
                (marker is not None and marker.get("uid") == launch.uid)
                or child is None
                or child.poll() is not None
            ):
                return self._poll(launch.task, launch.uid)
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"the launcher (pid {pid}) of task {launch.task!r} did not report in time")
            await asyncio.sleep(_POLL_STEP)

    def _build_env(self, launch: LaunchSpec, work_dir: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(work_dir),
            "PYTHONUNBUFFERED": "1",
        }
        env.update(launch.app_image.spec.env)
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

    def _spawn(self, launch: LaunchSpec) -> int:
        spec = launch.app_image.spec
        argv = [*spec.command, *spec.args]
        if not argv:
            raise InvalidArgument(
                f"AppImage {launch.app_image.meta.name!r} has no command; RunP needs spec.command",
                code=ErrorCode.APPIMAGE_INVALID,
            )
        work_dir = self.work_dir(launch.task)
        work_dir.mkdir(parents=True, exist_ok=True)
        for stale in (launcher.PROCESS_FILE, launcher.EXIT_FILE, launcher.LAUNCH_FILE):
            (work_dir / stale).unlink(missing_ok=True)
        env = self._build_env(launch, work_dir)
        template_vars = {**spec.env, **self._variables(launch, work_dir)}
        render_config_files(launch.app_image, template_vars, work_dir)
        launcher.write_json_atomic(
            work_dir / launcher.LAUNCH_FILE, {"uid": launch.uid, "argv": argv, "cwd": str(work_dir)}
        )
        with open(work_dir / LOG_FILE, "ab") as log:
            child = subprocess.Popen(
                [self._python, "-I", launcher.__file__, str(work_dir)],
                cwd=work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self._children[launch.task] = child
        return child.pid

    async def poll(self, task: str, uid: str | None = None) -> EngineStatus:
        return self._poll(task, uid)

    def _poll(self, task: str, uid: str | None) -> EngineStatus:
        work_dir = self.work_dir(task)
        paths: dict[str, Any] = {"work_dir": str(work_dir), "log_path": str(work_dir / LOG_FILE)}
        launch = _read_json(work_dir / launcher.LAUNCH_FILE)
        if launch is None or (uid is not None and launch.get("uid") != uid):
            return EngineStatus(EngineState.NOT_STARTED, **paths)
        child = self._children.get(task)
        if child is not None and child.poll() is not None:
            self._children.pop(task, None)  # reaped; the exit file (if any) tells the rest
        exit_status = self._exit_status(work_dir, launch, paths)
        if exit_status is not None:
            return exit_status
        marker = _read_json(work_dir / launcher.PROCESS_FILE)
        if marker is None or marker.get("uid") != launch.get("uid"):
            if child is not None and child.poll() is None:
                # Our own launcher, about to record itself: it runs (and leads its process group).
                return EngineStatus(EngineState.RUNNING, pid=child.pid, **paths)
            return EngineStatus(EngineState.LOST, detail="the launcher never recorded its process", **paths)
        pid = int(marker["pid"])
        if self._alive(pid, marker):
            return EngineStatus(EngineState.RUNNING, pid=pid, **paths)
        # It may have written the exit file between our two reads.
        exit_status = self._exit_status(work_dir, launch, paths)
        if exit_status is not None:
            return exit_status
        return EngineStatus(
            EngineState.LOST,
            pid=pid,
            detail=f"launcher pid {pid} is gone and recorded no exit status",
            **paths,
        )

    def _exit_status(
        self, work_dir: Path, launch: dict[str, Any], paths: dict[str, Any]
    ) -> EngineStatus | None:
        result = _read_json(work_dir / launcher.EXIT_FILE)
        if result is None or result.get("uid") != launch.get("uid"):
            return None
        marker = _read_json(work_dir / launcher.PROCESS_FILE) or {}
        code = result.get("exit_code")
        sig = result.get("signal")
        detail = str(result.get("error") or "")
        if not detail and (sig is not None or code not in (0, None)):
            detail = log_tail(work_dir / LOG_FILE)
        return EngineStatus(
            EngineState.EXITED,
            pid=marker.get("pid"),
            exit_code=None if code is None else int(code),
            signal=None if sig is None else int(sig),
            detail=detail,
            **paths,
        )

    def _alive(self, pid: int, marker: dict[str, Any]) -> bool:
        state = _process_state(pid)
        if state is None:
            if Path("/proc/self/stat").exists():
                return False  # Linux, and no such process
            try:  # no /proc (not Linux): existence only, pid reuse undetectable
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if state in ("Z", "X"):
            return False
        recorded_boot = marker.get("boot_id") or ""
        if recorded_boot and recorded_boot != launcher.boot_id():
            return False  # the machine rebooted: a process with this pid is someone else
        recorded_ticks = marker.get("start_ticks")
        return recorded_ticks is None or recorded_ticks == launcher.process_start_ticks(pid)

    async def wait(self, task: str, timeout: float, uid: str | None = None) -> EngineStatus:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = self._poll(task, uid)
            if status.state is not EngineState.RUNNING or loop.time() >= deadline:
                return status
            await asyncio.sleep(_POLL_STEP)

    async def stop(self, task: str, grace: float = 5.0, uid: str | None = None) -> EngineStatus:
        status = self._poll(task, uid)
        if status.state is not EngineState.RUNNING or status.pid is None:
            return status
        pgid = status.pid  # the launcher leads its own session and process group
        self._signal_group(pgid, signal.SIGTERM)
        status = await self.wait(task, grace, uid)
        if status.state is not EngineState.RUNNING:
            return status
        self._signal_group(pgid, signal.SIGKILL)
        status = await self.wait(task, 5.0, uid)
        if status.state is EngineState.LOST:
            # Killed together with its launcher: record the outcome so later polls agree.
            launch = _read_json(self.work_dir(task) / launcher.LAUNCH_FILE) or {}
            launcher.write_json_atomic(
                self.work_dir(task) / launcher.EXIT_FILE,
                {
                    "uid": launch.get("uid", ""),
                    "exit_code": None,
                    "signal": int(signal.SIGKILL),
                    "error": f"stopped by the node (no exit within {grace:g} s of SIGTERM)",
                },
            )
            status = self._poll(task, uid)
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
        return names
