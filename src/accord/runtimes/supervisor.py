"""The sandbox supervisor: the one process of an engine's chain that stays outside the sandbox.

Why a separate process at all (and not the node): the engine must survive a node restart, yet someone
has to be the parent of the sandbox when it ends -- to read the cgroup's OOM counter *before* the
cgroups are removed, to remove them even while the node is down, and to turn the chain's return code
back into "the engine exited with N / was killed by signal S".  The node cannot be that parent (it may
be gone); the engine cannot (it is the thing being judged).  So `prepare_sandbox` puts this small
program first in `PreparedSandbox.argv`:

    python -I -c <boot> SRC supervise <task>/.sandbox/state.json -- sh -c <attach> ... bwrap ... engine

What it does, and why each step:

- It is a *child subreaper* (PR_SET_CHILD_SUBREAPER), so what the chain orphans (bwrap's namespace init
  outlives its monitor for a moment) is reaped here instead of piling up as zombies under an init that
  may not reap.
- It starts the chain in its own process group, so a `killpg` of the caller's group (the runtime's
  stop) reaches only the supervisor, which turns SIGTERM/SIGINT/SIGHUP into a signal to every process
  *inside* the sandbox (`sandbox_processes`: bwrap's monitor and the namespace's init are skipped, the
  init would just die and take the engine down without a graceful stop).
- Every file operation goes through one directory fd opened with O_NOFOLLOW at start: without bwrap the
  engine may own the task directory and could swap `.sandbox` for a symlink; root must never follow it.
- When the chain ends it decodes the return code together with the cgroup (OOM kill -> "engine killed:
  memory limit N MiB exceeded", pids.max hits), removes the cgroups, deletes the engine's env file
  (its token), writes ``.sandbox/exit.json`` atomically, prints the reason to its stderr (the engine
  log) and exits *like the engine did* -- same exit code, or the same signal (core dumps off) -- so the
  runtime's launcher above it records the right status without knowing about sandboxes.

Limits in the record are the *engine's* budget (`state.json`: `memory_bytes`, `pids_max`), not the
cgroup's value, which includes the sandbox's own helpers (see `sandbox.MEMORY_HEADROOM`).

Imports only the standard library and `accord.runtimes.cgroups`; it starts for every engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from accord.runtimes.cgroups import CgroupSet, exit_status

# `python -I -c BOOT SRC ENTRY ARGS...` runs `main` below: -I keeps PYTHON* variables and the user site out
# of these root processes; SRC (the directory holding the `accord` package) goes first on sys.path.
BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from accord.runtimes import supervisor; supervisor.main()"
)
SRC = str(Path(__file__).resolve().parents[2])
EXIT_FILE = "exit.json"
ENV_FILE = "env.json"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_CHILD_SUBREAPER = 36

_NON_FATAL = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGCONT}
_NON_FATAL |= {signal.SIGURG, signal.SIGWINCH}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def sandbox_processes(top: int, *, via_bwrap: bool) -> list[int]:
    """Pids inside the sandbox started by `top` (bwrap: skip the monitor and the namespace's init)."""
    tree = _children()
    found: list[int] = []
    level, depth = [top], 0
    while level:
        if depth >= (2 if via_bwrap else 0):
            found.extend(level)
        level = [c for p in level for c in tree.get(p, [])]
        depth += 1
    return found


def _reap_orphans(rounds: int = 100) -> None:
    """Reap what the chain orphaned, bounded: an orphan that keeps running (no cgroup to kill it) is
    left be rather than waited for forever."""
    for _ in range(rounds):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def main() -> None:
    """`python -I -c BOOT SRC supervise STATE -- CHAIN...` or `... SRC trial BWRAP...`."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if sys.argv[2] == "trial":  # detection's trial run of bwrap, with its orphan reaped
        code = subprocess.run(sys.argv[3:]).returncode
        _reap_orphans()
        sys.exit(code)
    supervise(Path(sys.argv[3]), sys.argv[5:])


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def supervise(state_path: Path, chain: list[str]) -> None:
    """Run the chain, then record and mirror how it ended (see the module docstring)."""
    control = os.open(state_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    with open(os.open(state_path.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=control), encoding="utf-8") as fh:
        state = json.load(fh)
    via_bwrap = bool(state["via_bwrap"])
    cgroup = CgroupSet.from_dict(state["cgroup"]) if state["cgroup"] else None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(EXIT_FILE, dir_fd=control)
    child = subprocess.Popen(
        chain, cwd=state["task_dir"], env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, process_group=0
    )
    forwarded: set[int] = set()

    def forward(signum: int, _frame: Any) -> None:
        if signum in forwarded:  # the caller's killpg and its launcher's forwarding both arrive
            return
        forwarded.add(signum)
        for pid in sandbox_processes(child.pid, via_bwrap=via_bwrap):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    returncode = child.wait()
    status = exit_status(
        returncode,
        cgroup,
        via_bwrap=via_bwrap,
        memory_limit=_optional_int(state.get("memory_bytes")),
        pids_limit=_optional_int(state.get("pids_max")),
    )
    problems = cgroup.remove() if cgroup is not None else []
    _reap_orphans()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ENV_FILE, dir_fd=control)
    record = json.dumps({**status.to_dict(), "cleanup_problems": problems}).encode()
    tmp = f".{EXIT_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=control)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    os.replace(tmp, EXIT_FILE, src_dir_fd=control, dst_dir_fd=control)
    print(f"accord sandbox: {status.reason}", file=sys.stderr, flush=True)
    if status.signal is not None and status.signal not in _NON_FATAL:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), status.signal)
    sys.exit(status.exit_code if status.exit_code is not None else 128 + (status.signal or 0))
