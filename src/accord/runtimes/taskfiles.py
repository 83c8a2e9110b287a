"""The node's side of a task directory: files the node reads or writes where an engine has been.

Threat model.  After one run, an engine (uid 65534, or the node's own uid in a user-namespace sandbox)
has owned files in its task directory and could have left anything there: symlinks to the domain key or
/etc/shadow, a `kuscia -> /etc` directory link, a FIFO where the node expects its log.  The node runs as
root and must never read or write *through* such a thing.  So, here:

- `reset_task_dir` empties the directory before a new run, removing without following links
  (`shutil.rmtree` is fd-based on Linux), keeping only the engine log when it is still the node's own
  regular file.  Config files are rendered into the emptied directory afterwards, so a planted
  `kuscia -> /etc` can no longer steer a root write.
- `remove_task_dir` removes a finished task's whole directory the same way (the retention sweep):
  never through a link, and not at all where `rmtree` could be steered by one.
- `open_log`, `log_tail` and `read_json` open with O_NOFOLLOW (and O_NONBLOCK for reads, so a FIFO
  cannot hang the node) and accept only regular files.
- While an engine runs as another uid, the sandbox keeps the task directory root's and sticky
  (`SandboxSpec.protected`), so the engine cannot replace the log or `.sandbox` between these checks.

Also here: which node services an engine's environment names (`bridge_env`), because the sandbox has no
network of its own and must be told which host ports to bridge, and which host directories may be shown
read-only to an engine (`safe_read_only_paths`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_MAX_JSON = 1 << 20
_UNPRIVILEGED = 1024
_LOOPBACK_ALIASES = {"", "0.0.0.0", "localhost", "127.0.0.1"}  # reached as 127.0.0.1 on the host

# Env variable -> bridge name: the three node services an engine may reach (DESIGN.md section 4).
BRIDGED_ENV = {"ACCORD_NODE_API": "api", "ACCORD_EGRESS": "egress", "ACCORD_DATAMESH": "datamesh"}


def _retry_writable(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """rmtree's error hook: an engine may leave a directory without write permission for its owner."""
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o700)
    func(path)


def reset_task_dir(task_dir: Path, keep: Iterable[str] = ()) -> None:
    """Create `task_dir` or empty it (never following links); entries in `keep` stay if they are regular
    files owned by this process's uid (anything else by that name is removed too)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    if task_dir.is_symlink() or not task_dir.is_dir():
        raise OSError(errno.ENOTDIR, f"{task_dir} is not a directory")
    kept = set(keep)
    me = os.geteuid()
    with os.scandir(task_dir) as entries:
        for entry in list(entries):
            info = entry.stat(follow_symlinks=False)
            if entry.name in kept and stat.S_ISREG(info.st_mode) and info.st_uid == me:
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path, onerror=_retry_writable)
            else:
                os.unlink(entry.path)


def remove_task_dir(task_dir: Path) -> None:
    """Remove `task_dir` and everything in it without following any link (files an engine left there
    may belong to another uid; the node removes them as the owner of the parent).  `task_dir` itself
    must be a real directory: a link in its place is refused, not followed or removed."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - not Linux
        raise OSError(errno.ENOTSUP, "this platform's rmtree may follow links; task dirs are kept")
    info = os.lstat(task_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, f"{task_dir} is not a directory")
    outside = os.path.dirname(os.path.abspath(task_dir))

    def retry(func: Callable[..., Any], path: str, exc_info: Any) -> None:
        if os.path.dirname(os.path.abspath(path)) == outside:
            raise exc_info[1]  # the task dir itself: never chmod the tasks root to retry
        _retry_writable(func, path, exc_info)

    shutil.rmtree(task_dir, onerror=retry)


def open_log(path: Path) -> int:
    """An fd appending to the node-owned log file at `path` (created if missing); refuses anything else."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(errno.EPERM, f"{path} is not the node's own log file")
    return fd


def _open_regular(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a regular file (not through a link), or None."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(_MAX_JSON))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, lines: int = 3, max_chars: int = 400) -> str:
    """The last non-empty lines of a log, joined with ' | ' (for a status message).

    The sandbox supervisor's closing line ("accord sandbox: engine exited with code 3") is left out: the
    status message says that already.
    """
    fd = _open_regular(path)
    if fd is None:
        return ""
    try:
        with os.fdopen(fd, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith("accord sandbox: engine ")
    ][-lines:]
    return " | ".join(tail)[-max_chars:]


def bridge_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """For a sandboxed engine: (its env with each node-service URL pointing at the sandbox's own
    127.0.0.1 and the same port, outbound bridge name -> the real (host, port)).

    The port stays the same, so what the engine was told and what the shim listens on agree; only the
    host is rewritten, because inside the sandbox nothing but its private loopback exists.  A value that
    is not a URL with a port, or names a port below 1024 (the unprivileged shim could not listen on it),
    is left alone and not bridged.
    """
    out = dict(env)
    targets: dict[str, tuple[str, int]] = {}
    used: dict[int, tuple[str, int]] = {}
    for variable, name in BRIDGED_ENV.items():
        value = env.get(variable, "")
        try:
            parts = urlsplit(value)
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        if not value or port is None or port < _UNPRIVILEGED or host is None:
            continue  # (the in-sandbox shim runs unprivileged: it cannot listen below 1024)
        target = ("127.0.0.1" if host in _LOOPBACK_ALIASES else "::1" if host == "::" else host, port)
        if port in used:  # two variables, one port: one listener serves both (if they agree)
            if used[port] == target:
                out[variable] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
            continue
        used[port] = target
        targets[name] = target
        out[variable] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
    return out, targets


def env_ports(env: Mapping[str, str]) -> set[int]:
    """Ports of the node services named in `env` (never hand these to an engine as its own)."""
    return {port for _, port in bridge_env(env)[1].values()}


def safe_read_only_paths(paths: Iterable[Path], node_dir: Path) -> list[Path]:
    """The existing directories among `paths` that may be shown read-only in a sandbox: never the node
    directory (or anything in it), a home directory as a whole, or '/'."""
    forbidden = {Path("/"), Path("/root"), Path("/home"), Path.home().resolve()}
    node = node_dir.resolve()
    out: list[Path] = []
    for path in paths:
        real = Path(path).resolve()
        if real.is_dir() and real not in forbidden and not real.is_relative_to(node) and real not in out:
            out.append(real)
    return out
