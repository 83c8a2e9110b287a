"""The engine launcher: a tiny supervisor that outlives the node and writes the engine's exit status.

Why it exists: RunP starts engines in their own session so that a node killed with SIGKILL does not take
running engines with it (a restarted node re-adopts them).  But a restarted node is no longer the
engine's parent, so it cannot `wait()` for it and would never learn its exit code.  The launcher is that
parent: it records who it is, runs the engine, waits, and writes the outcome to a file the node reads.

Files in its *run directory* (`<task dir>/.sandbox/run/`, written atomically, rename after write).  That
directory belongs to the node, never to the engine: the engine runs as another uid (or in a sandbox where
`.sandbox` is read-only), so it can neither forge these records -- a forged `process.json` naming pid 1
would make the node `killpg` a process group of its choosing as root -- nor plant symlinks for the
launcher to write through:

- `launch.json`  (written by the runtime)  `{"uid", "argv", "cwd", ...}`;
- `process.json` (written here, before the engine starts)  `{"uid", "pid", "start_ticks", "boot_id"}`,
  the identity of this launcher process.  `start_ticks` (field 22 of `/proc/<pid>/stat`) and the kernel
  boot id make a reused pid detectable: same pid, different start time means another process;
- `exit.json`    (written here when the engine ends)  `{"uid", "exit_code", "signal", "error"}`.

The launcher forwards SIGTERM/SIGINT/SIGHUP to the engine and keeps waiting, so a graceful stop still
produces an exit status.  It is run by file path with `python -I` and a minimal environment (never the
engine's: an AppImage's LD_PRELOAD must not load into a root process), imports only the standard
library, and must stay that way: it starts for every task and must not depend on the node's packages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

LAUNCH_FILE = "launch.json"
PROCESS_FILE = "process.json"
EXIT_FILE = "exit.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux), or None where /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: launcher.py RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    launch = json.loads((run_dir / LAUNCH_FILE).read_text())
    uid = launch.get("uid", "")
    me = os.getpid()
    write_json_atomic(
        run_dir / PROCESS_FILE,
        {"uid": uid, "pid": me, "start_ticks": process_start_ticks(me), "boot_id": boot_id()},
    )
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    result: dict[str, Any] = {"uid": uid, "exit_code": None, "signal": None, "error": ""}
    try:
        child = subprocess.Popen(launch["argv"], cwd=launch.get("cwd") or None, stdin=subprocess.DEVNULL)
    except OSError as exc:
        # The shell's conventions: 127 for a missing program, 126 for one that cannot be executed.
        result["exit_code"] = 127 if isinstance(exc, FileNotFoundError) else 126
        result["error"] = f"cannot start {launch['argv'][0]!r}: {exc.strerror or exc}"
        print(f"accord launcher: {result['error']}", file=sys.stderr, flush=True)
    else:
        code = child.wait()
        if code < 0:
            result["signal"] = -code
        else:
            result["exit_code"] = code
    write_json_atomic(run_dir / EXIT_FILE, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
