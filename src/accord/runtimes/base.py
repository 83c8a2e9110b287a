"""The Runtime protocol: how the task controller starts, watches and stops engines, whatever runs them.

Why a protocol with a small surface: RunP (child processes, this package), a sandboxed RunP (bubblewrap +
cgroups, later) and RunK (Kubernetes pods, later) must be interchangeable under the task controller, and
the controller must survive its own restart.  So every call is keyed by the *task name* (plus the task's
uid, so a re-created task with the same name never adopts the previous run), the runtime keeps what it
needs to find an engine again on disk (or in the cluster), and `poll` answers from that record alone:

- `NOT_STARTED`  nothing was launched for this task (uid), so the controller may start it;
- `RUNNING`      the engine runs (possibly started by a previous node process: re-adopt it);
- `EXITED`       it ended; `exit_code` or `signal` says how;
- `LOST`         it was started but neither runs nor left an exit status (e.g. killed together with
                 its supervisor while the node was down): the task fails with that explanation.

`LaunchSpec` carries everything the engine contract needs (kuscia.md section 4); the runtime renders it
into env variables and config files (`runtimes/contract.py`) and never adds anything of the node's own
(no node token, no domain key, no copy of the node's environment).
"""

from __future__ import annotations

import signal as signals
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from accord.resources.appimage import AppImage, AppPort
from accord.resources.job import AllocatedPort, Party


class EngineState(StrEnum):
    NOT_STARTED = "NotStarted"
    RUNNING = "Running"
    EXITED = "Exited"
    LOST = "Lost"


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class EngineStatus:
    """What a runtime knows about one task's engine."""

    state: EngineState
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    work_dir: str = ""
    log_path: str = ""
    detail: str = ""
    oom_killed: bool = False  # killed by the kernel for exceeding its memory limit (a crash, too)
    memory_limit_bytes: int | None = None  # the engine's memory budget, named when it was exceeded

    @property
    def succeeded(self) -> bool:
        return self.state is EngineState.EXITED and self.exit_code == 0 and self.signal is None

    @property
    def crashed(self) -> bool:
        """Ended by a signal (killed, segfault, OOM) rather than by exiting."""
        return self.state is EngineState.EXITED and self.signal is not None

    def describe(self) -> str:
        """One line for a task's status message.

        A *crash* (ended by a signal: "engine crashed (killed by signal SIGSEGV)", or the memory limit:
        "engine killed: memory limit 64 MiB exceeded") reads differently from a *failure* (the engine
        chose its exit code: "engine exited with code 3"); `detail` (the log's last lines) follows.
        """
        if self.state is EngineState.EXITED:
            if self.oom_killed:
                limit = self.memory_limit_bytes
                text = (
                    f"engine killed: memory limit {limit / (1 << 20):g} MiB exceeded"
                    if limit
                    else "engine killed: out of memory"
                )
            elif self.signal is not None:
                text = f"engine crashed (killed by signal {signal_name(self.signal)})"
            elif self.exit_code == 0:
                text = "engine exited with code 0"
            else:
                text = f"engine exited with code {self.exit_code}"
        elif self.state is EngineState.LOST:
            text = "engine lost while the node was down"
        elif self.state is EngineState.RUNNING:
            text = f"engine running (pid {self.pid})"
        else:
            text = "engine not started"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class LaunchSpec:
    """One party's engine for one task: what to run and the engine-contract values to give it."""

    task: str
    uid: str
    domain: str
    app_image: AppImage
    input_config: str
    parties: Sequence[Party]
    self_party_index: int
    ports: Sequence[AllocatedPort]
    node_api: str
    token: str
    extra_env: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    """See the module docstring. Every method is safe to call again after a node restart."""

    def isolation(self) -> str:
        """Human description of the isolation actually in force (e.g. 'none (plain processes)')."""
        ...

    def work_dir(self, task: str) -> Path:
        """The task's own directory (config files, results, logs)."""
        ...

    def log_path(self, task: str) -> Path:
        """Where the engine's stdout and stderr go; kept after the engine ends."""
        ...

    async def allocate_ports(self, task: str, ports: Sequence[AppPort]) -> list[AllocatedPort]:
        """Reserve one free port per AppImage port for this task."""
        ...

    async def release(self, task: str) -> None:
        """Forget the task's port reservations (idempotent)."""
        ...

    async def start(self, launch: LaunchSpec) -> EngineStatus:
        """Prepare the work dir, render config files and launch the engine; returns its status."""
        ...

    async def poll(self, task: str, uid: str | None = None) -> EngineStatus:
        """The engine's current state; `uid` (when given) must match the launched task's uid."""
        ...

    async def wait(self, task: str, timeout: float, uid: str | None = None) -> EngineStatus:
        """Poll until the engine is no longer running or `timeout` seconds passed."""
        ...

    async def stop(self, task: str, grace: float = 5.0, uid: str | None = None) -> EngineStatus:
        """Terminate the engine (SIGTERM, then SIGKILL after `grace` seconds); returns the final status."""
        ...

    async def running_tasks(self) -> list[str]:
        """Names of tasks whose engine (started by this or a previous node process) still runs."""
        ...

    def on_exit(self, listener: Callable[[str], None]) -> None:
        """Call `listener(task)` soon after an engine this runtime launched or adopted ends.

        A wake-up, not a record: it may come more than once or (where the machine cannot watch a
        process) never, so callers still `poll`, only less often; `poll` stays the one source of truth.
        """
        ...
