"""`<node dir>/run/endpoints.json`: where a running node actually listens, for the CLI and the SDK.

Why: every port may be configured as 0 ("pick a free one"), and then `accord.toml` cannot tell a client
where the API is.  So once every module listens, the daemon publishes the ports it bound, and
`AccordClient.from_node_dir` (hence every CLI command) reads them, falling back to the configured ports
when there is no live record.

The record names the process that wrote it (pid, its start time in clock ticks since boot and the boot
id), so a record left behind by a killed node is recognised as stale even if its pid was reused since.
A reader that cannot see the process (another pid namespace) also treats it as stale and falls back to
the configured ports.  It is written atomically (temp file + rename) with mode 0600 in a 0700 `run/`
directory, and removed on a clean shutdown -- only by the process it names, so a node refused for
running twice never removes the live node's record.

Only the standard library and the settings are imported here: the client reads this without loading
the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from accord.runtimes.launcher import boot_id, process_start_ticks
from accord.settings import NodeSettings

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_MAX_BYTES = 1 << 16
LOCK_FILE = "node.lock"


def local_host(host: str) -> str:
    """How a client on this machine reaches a listener bound to `host` (URL form: IPv6 in brackets)."""
    host = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host


def local_url(host: str, port: int) -> str:
    return f"http://{local_host(host)}:{port}"


@dataclass(frozen=True)
class Endpoints:
    """What the running node publishes: its process and the ports it actually bound."""

    domain: str
    pid: int
    api_url: str
    api_port: int
    gateway_host: str
    gateway_port: int
    egress_port: int
    datamesh_port: int
    start_ticks: int | None = None
    boot_id: str = ""
    written_at: float = 0.0

    def is_live(self) -> bool:
        """Whether the process that wrote this record still runs (and is the same process)."""
        if self.pid <= 0 or (self.boot_id and self.boot_id != boot_id()):
            return False  # nonsense, or the machine rebooted since
        ticks = process_start_ticks(self.pid)
        if ticks is not None:
            return ticks == self.start_ticks  # a reused pid has another start time
        if os.path.exists("/proc/self/stat"):
            return False  # Linux, and no such process (or not in our pid namespace)
        try:  # no /proc: existence only
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoints:
        ticks = data.get("start_ticks")
        return cls(
            domain=str(data["domain"]),
            pid=int(data["pid"]),
            api_url=str(data["api_url"]),
            api_port=int(data["api_port"]),
            gateway_host=str(data.get("gateway_host", "")),
            gateway_port=int(data.get("gateway_port", 0)),
            egress_port=int(data.get("egress_port", 0)),
            datamesh_port=int(data.get("datamesh_port", 0)),
            start_ticks=None if ticks is None else int(ticks),
            boot_id=str(data.get("boot_id", "")),
            written_at=float(data.get("written_at", 0.0)),
        )


def this_process(
    settings: NodeSettings, *, api_port: int, gateway_port: int, egress_port: int, datamesh_port: int
) -> Endpoints:
    """The record for this process with the ports it bound."""
    pid = os.getpid()
    return Endpoints(
        domain=settings.domain,
        pid=pid,
        api_url=local_url(settings.api_host, api_port),
        api_port=api_port,
        gateway_host=settings.gateway_host,
        gateway_port=gateway_port,
        egress_port=egress_port,
        datamesh_port=datamesh_port,
        start_ticks=process_start_ticks(pid),
        boot_id=boot_id(),
        written_at=time.time(),
    )


def publish(settings: NodeSettings, endpoints: Endpoints) -> None:
    """Write the record atomically (0600, in a 0700 `run/` directory)."""
    run_dir = settings.run_dir
    run_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)
    path = settings.endpoints_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(endpoints), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(settings: NodeSettings) -> Endpoints | None:
    """The published record, live or not; None if there is none or it cannot be read."""
    try:
        fd = os.open(settings.endpoints_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(_MAX_BYTES))
        return Endpoints.from_dict(data) if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_live(settings: NodeSettings) -> Endpoints | None:
    """The record of the node running from this directory now, or None (no node, or a stale record)."""
    record = read(settings)
    return record if record is not None and record.is_live() else None


def lock_node_dir(settings: NodeSettings) -> int | None:
    """Take the node directory's lock (`run/node.lock`, an exclusive `flock`); the fd to keep open for
    the node's lifetime, or None when another process holds it (a node runs or is starting there).

    The published record tells a client where a node listens; this lock is what keeps two nodes from
    running on one directory, also when both start at once, before either has published anything.  The
    kernel releases it when the process ends, however it ends.
    """
    run_dir = settings.run_dir
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def withdraw(settings: NodeSettings) -> None:
    """Remove the record on a clean shutdown, if this process wrote it."""
    record = read(settings)
    if record is not None and record.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings.endpoints_path)
