"""What RunP knows about an engine, read from its records alone (so a restarted node knows it too).

Records, all in the node-owned part of the task dir (see `process.py` for why the engine cannot forge
them): the launcher's `.sandbox/run/{launch,process,exit}.json` (`launcher.py`) and the sandbox
supervisor's `.sandbox/exit.json` (`supervisor.py`: OOM kill, pids-limit hits).

- no launch record for this run's uid -> NotStarted;
- the launcher's exit record -> Exited, with the supervisor's view added: an OOM kill names the engine's
  memory budget, a pids limit that was hit is noted, a failure or crash carries the log's last lines;
- a live launcher whose start time (and boot id) match the recorded ones -> Running.  A record without
  a start time is never taken as a match where /proc exists, and pids 0 and 1 never: a process record
  naming pid 1 must not make the node signal init's process group;
- neither -> Lost.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from accord.runtimes import launcher
from accord.runtimes.base import EngineState, EngineStatus
from accord.runtimes.sandbox import CONTROL_DIR, read_exit_status
from accord.runtimes.taskfiles import log_tail, read_json

LOG_FILE = "engine.log"
RUN_DIR = f"{CONTROL_DIR}/run"


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc (R, S, Z ...), or None if /proc has no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[0]


def launcher_alive(pid: int, marker: dict[str, Any]) -> bool:
    """Whether the launcher recorded in `marker` (process.json) is this live process `pid`."""
    if pid <= 1:
        return False
    state = process_state(pid)
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
    return recorded_ticks is not None and recorded_ticks == launcher.process_start_ticks(pid)


def engine_status(
    work_dir: Path, uid: str | None, child: subprocess.Popen[bytes] | None = None
) -> EngineStatus:
    """The engine's state from its records; `child`: the launcher, if this process started it."""
    run_dir = work_dir / RUN_DIR
    paths: dict[str, Any] = {"work_dir": str(work_dir), "log_path": str(work_dir / LOG_FILE)}
    launch = read_json(run_dir / launcher.LAUNCH_FILE)
    if launch is None or (uid is not None and launch.get("uid") != uid):
        return EngineStatus(EngineState.NOT_STARTED, **paths)
    ended = exit_record(work_dir, launch, paths)
    if ended is not None:
        return ended
    marker = read_json(run_dir / launcher.PROCESS_FILE)
    if marker is None or marker.get("uid") != launch.get("uid"):
        if child is not None and child.poll() is None:
            # Our own launcher, about to record itself: it runs (and leads its process group).
            return EngineStatus(EngineState.RUNNING, pid=child.pid, **paths)
        return EngineStatus(EngineState.LOST, detail="the launcher never recorded its process", **paths)
    pid = int(marker["pid"])
    if launcher_alive(pid, marker):
        return EngineStatus(EngineState.RUNNING, pid=pid, **paths)
    # It may have written the exit file between our two reads.
    ended = exit_record(work_dir, launch, paths)
    if ended is not None:
        return ended
    return EngineStatus(
        EngineState.LOST, pid=pid, detail=f"launcher pid {pid} is gone and recorded no exit status", **paths
    )


def exit_record(work_dir: Path, launch: dict[str, Any], paths: dict[str, Any]) -> EngineStatus | None:
    """Exited, from the launcher's exit record of this run (None while there is none)."""
    run_dir = work_dir / RUN_DIR
    result = read_json(run_dir / launcher.EXIT_FILE)
    if result is None or result.get("uid") != launch.get("uid"):
        return None
    marker = read_json(run_dir / launcher.PROCESS_FILE) or {}
    code = result.get("exit_code")
    sig = result.get("signal")
    limits = launch.get("limits") or {}
    sandbox = read_exit_status(work_dir)  # the supervisor's view: OOM kill, pids limit hits
    oom = sandbox is not None and sandbox.oom_killed
    notes = []
    if sandbox is not None and sandbox.pids_limit_hits and not oom and code != 0:
        notes.append(f"process limit {limits.get('pids')} reached {sandbox.pids_limit_hits} times")
    detail = str(result.get("error") or "")
    if not detail and (sig is not None or code not in (0, None)):
        detail = log_tail(work_dir / LOG_FILE)
    memory = limits.get("memory_bytes")
    return EngineStatus(
        EngineState.EXITED,
        pid=marker.get("pid"),
        exit_code=None if code is None else int(code),
        signal=None if sig is None else int(sig),
        detail="; ".join(n for n in (*notes, detail) if n),
        oom_killed=oom,
        memory_limit_bytes=int(memory) if oom and isinstance(memory, int) else None,
        **paths,
    )
