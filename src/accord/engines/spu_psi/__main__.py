"""`python -m accord.engines.spu_psi`: a small guard around the party process (`party.py`).

Why a guard: libpsi runs parts of a protocol in native threads (ECDH masks and receives concurrently),
and when the link fails there -- the peer was killed, its gateway went away -- the C++ exception ends
in `std::terminate`: SIGABRT, no Python `except` runs, no one-line reason, and the private copy of the
keys stays in the work dir.  The guard (stdlib only: a few MB, no spu) starts the party process with
the same environment, relays its output line by line while keeping the tail, forwards SIGTERM/SIGINT,
and exits as it did.  Once the party has exited, whatever happened, the guard removes its private dir
and its libpsi trace files again: no writer is left then (the party's own cleanup can race a native
thread that outlives a SIGTERM).  If the party died by a signal, the guard also prints the one line the
engine contract asks for:

    spu-psi: peer error: the link to bob failed during the PSI and libpsi aborted (Get data timeout ...)
    spu-psi: internal error: libpsi crashed with SIGSEGV (<its last error line>)

with exit code 4 or 1 like any other peer or internal failure.  Killing the process group (what the
runtime does last) takes both; nothing else is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import FrameType
from typing import IO

from accord.engines.spu_psi.files import TraceFiles, remove_private

PREFIX = "spu-psi"
PEER_EXIT = 4
INTERNAL_EXIT = 1
_LINK_FAILURE = re.compile(r"timeout|E0000000\d{3}|brpc|link|connect|channel|peer", re.IGNORECASE)
_ERROR_LINE = re.compile(r"\[(error|critical)\]|what:|Enforce fail|timeout|exception", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*(\[[^\]]*\]\s*)*")
_SPDLOG = re.compile(r"^\[\d{4}-\d\d-\d\d ")  # libpsi/yacl's own log lines
_WAITING = "We will wait for topic"  # yacl's blackbox link, still polling for the peer's next message


def _pump(source: IO[bytes], sink: IO[bytes], tail: deque[str]) -> None:
    for line in iter(source.readline, b""):
        sink.write(line)
        sink.flush()
        tail.append(line.decode(errors="replace").rstrip())


def _peer_name() -> str:
    try:
        cluster = json.loads(os.environ.get("TASK_CLUSTER_DEFINE", ""))
        me = os.environ.get("KUSCIA_DOMAIN_ID", "")
        others = [str(p["name"]) for p in cluster["parties"] if str(p["name"]) != me]
        return ", ".join(others) or "the peer"
    except (ValueError, KeyError, TypeError):
        return "the peer"


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not line.lstrip().startswith("#"):
            return _LOG_PREFIX.sub("", line.strip()).removeprefix("what:").strip()[:300]
    return ""


def explain_crash(signum: int, lines: list[str]) -> tuple[int, str]:
    """Exit code and one-line reason for a party process that died by signal `signum`."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    last = _last_error(lines)
    detail = f" ({last})" if last else ""
    if signum == signal.SIGKILL:
        reason = f"{PREFIX}: internal error: the engine was killed (SIGKILL: out of memory?){detail}"
        return INTERNAL_EXIT, reason
    if last and _LINK_FAILURE.search(last):
        return PEER_EXIT, (
            f"{PREFIX}: peer error: the link to {_peer_name()} failed during the PSI and libpsi aborted"
            f"{detail}"
        )
    native = [line for line in lines if _SPDLOG.match(line)]
    if signum == signal.SIGABRT and native and _WAITING in native[-1]:
        return PEER_EXIT, (
            f"{PREFIX}: peer error: {_peer_name()} stopped answering during the PSI "
            "(libpsi aborted while its link waited for the peer's next message)"
        )
    return INTERNAL_EXIT, f"{PREFIX}: internal error: libpsi crashed with {name}{detail}"


def main() -> int:
    work_dir = Path(os.environ.get("ACCORD_WORK_DIR") or os.getcwd())
    child = subprocess.Popen(
        [sys.executable, "-m", "accord.engines.spu_psi.party"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    traces = TraceFiles(pid=child.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    out_tail: deque[str] = deque(maxlen=200)
    err_tail: deque[str] = deque(maxlen=50)
    assert child.stdout is not None and child.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, out_tail), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, err_tail), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    code = child.wait()
    for pump in pumps:
        pump.join(timeout=5)
    # Always, once the party is gone: its own cleanup can race a native libpsi thread still running when
    # SIGTERM unwound the main thread (libpsi then recreates its scratch dir under the private dir).
    remove_private(work_dir)
    traces.cleanup()
    if code >= 0:
        return code
    exit_code, reason = explain_crash(-code, [*err_tail, *out_tail])
    sys.stdout.flush()
    print(reason, file=sys.stderr, flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
