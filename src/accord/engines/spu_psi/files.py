"""Private files of one engine run, and their removal (stdlib only: the guard process uses it too).

- `<work dir>/.spu-psi/` (mode 0700): libpsi's input file, its output, its scratch dirs and `sort`'s
  spill files (TMPDIR points here).  It holds a copy of the party's keys, so it is removed after every
  run -- by the engine, and again by the guard once the party process has exited (a native libpsi
  thread may still write there while a SIGTERM unwinds the engine, or libpsi took the process down).
- `/tmp/psi_<random>.trace`: libpsi writes a perfetto trace into /tmp whatever TMPDIR says.  Ours are
  recognised by the process id in the trace's process descriptor (protobuf field 1 followed by the
  command line, field 2), so two engines sharing /tmp never delete each other's.  Under the RunP
  sandbox /tmp is private anyway.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PRIVATE_DIR = ".spu-psi"
TRACE_DIR = Path("/tmp")


def private_dir(work_dir: Path) -> Path:
    return work_dir / PRIVATE_DIR


def remove_private(work_dir: Path) -> None:
    shutil.rmtree(private_dir(work_dir), ignore_errors=True)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class TraceFiles:
    """libpsi's trace files written by process `pid` (default: this one) after this object was made."""

    def __init__(self, pid: int | None = None, directory: Path = TRACE_DIR) -> None:
        self.directory = directory
        self.before = set(self._list())
        self.marker = b"\x08" + _varint(os.getpid() if pid is None else pid) + b"\x12"

    def _list(self) -> list[Path]:
        try:
            return list(self.directory.glob("psi_*.trace"))
        except OSError:
            return []

    def cleanup(self) -> int:
        removed = 0
        for path in self._list():
            if path in self.before:
                continue
            try:
                if self.marker in path.read_bytes():
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed
