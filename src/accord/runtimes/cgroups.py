"""Per-engine cgroups (v1 hybrid or v2 unified), written directly through cgroupfs.

Why cgroups and not only rlimits: an rlimit is per process and the engine may fork; RLIMIT_AS caps
*virtual* memory (which breaks allocators and runtimes that reserve big arenas; the fallback is
RLIMIT_DATA), and there is no rlimit for a CPU *rate*.  A cgroup caps the whole process tree: resident
memory (the kernel OOM-kills inside the group and counts it, so we can tell "memory limit exceeded" from
any other SIGKILL), a CPU quota (cores as a CFS quota per 100 ms period) and a pids maximum (fork
bombs stop at the limit).

Why no systemd / cgcreate: the node may run in a container or CI VM without systemd; the files are the
stable interface.  Layout discovery never hard-codes paths: the mounts come from /proc/self/mountinfo
and the node's own group from /proc/self/cgroup, and engines go *below the node's own group*
(``<own>/<parent_name>/<leaf>``, v1) so the node's own limits still bound them.  On v2 a process may not
sit in a group that hands controllers down ("no internal processes"), so engines go into a sibling
branch ``<parent of own>/<parent_name>/<leaf>``; that path needs delegated controllers and is not
exercised on the hybrid-v1 machines this was measured on.

What the engine can do about it: nothing.  Inside the sandbox /sys is read-only and the cgroup
namespace is private, so the engine can neither raise its limits nor move itself out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from accord.errors import AccordError, ErrorCode

CONTROLLERS = ("memory", "cpu", "pids")
CFS_PERIOD_US = 100_000
_LEAF_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class CgroupError(AccordError):
    """A cgroup could not be created, limited or removed (the message names the file and the cause)."""

    default_code = ErrorCode.UNKNOWN


@dataclass(frozen=True)
class MountedHierarchy:
    """One cgroup hierarchy as mounted: v1 (one per controller set) or the v2 unified one."""

    mount_point: str
    root: str  # the hierarchy path shown as the mount's root (normally "/")
    controllers: tuple[str, ...]  # v1: from the super options; v2: empty here
    version: int


def parse_mountinfo(text: str) -> list[MountedHierarchy]:
    """cgroup and cgroup2 mounts from /proc/self/mountinfo text."""
    found: list[MountedHierarchy] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, super_opts = rfields[0], rfields[2]
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            found.append(MountedHierarchy(mount_point, root, (), 2))
        elif fstype == "cgroup":
            ctrls = tuple(o for o in super_opts.split(",") if o in CONTROLLERS or o in ("cpuacct", "cpuset"))
            found.append(MountedHierarchy(mount_point, root, ctrls, 1))
    return found


def _unescape(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """(v1 controller -> path, v2 path or None) from /proc/<pid>/cgroup text."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            v2 = path
        else:
            for ctrl in ctrls.split(","):
                v1[ctrl] = path
    return v1, v2


def _join(mount: MountedHierarchy, path: str) -> Path:
    rel = path
    if mount.root not in ("", "/") and (rel == mount.root or rel.startswith(mount.root + "/")):
        rel = rel[len(mount.root) :]
    return Path(mount.mount_point) / rel.lstrip("/")


def _probe_writable(base: Path) -> str | None:
    """None when a child group can be created (and removed) under `base`, else why not."""
    probe = base / f"accord-probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a group under {base}: {exc.strerror or exc}"
    with contextlib.suppress(OSError):
        probe.rmdir()
    return None


@dataclass(frozen=True)
class CgroupLayout:
    """What this machine lets the node do with cgroups; found once by `detect_cgroups`."""

    version: str  # "v1", "v2" or "none"
    bases: Mapping[str, str] = field(default_factory=dict)  # usable controller -> directory for new groups
    problems: tuple[str, ...] = ()  # why a controller (or all of cgroups) is unusable
    parent_name: str = "accord"

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(c for c in CONTROLLERS if c in self.bases)

    def describe(self) -> str:
        if not self.bases:
            return f"no cgroups ({self.problems[0]})" if self.problems else "no cgroups"
        return f"cgroup {self.version} ({', '.join(self.controllers)})"


def detect_cgroups(
    mountinfo: str | None = None, proc_cgroup: str | None = None, *, probe: bool = True
) -> CgroupLayout:
    """Find writable memory/cpu/pids hierarchies for the current process (v1 first, then v2)."""
    try:
        mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return CgroupLayout("none", problems=(f"cannot read /proc: {exc}",))
    mounts = parse_mountinfo(mountinfo)
    own_v1, own_v2 = parse_proc_cgroup(proc_cgroup)
    problems: list[str] = []
    bases: dict[str, str] = {}
    for ctrl in CONTROLLERS:
        mount = next((m for m in mounts if m.version == 1 and ctrl in m.controllers), None)
        if mount is None or ctrl not in own_v1:
            continue
        base = _join(mount, own_v1[ctrl])
        why = _probe_writable(base) if probe else None
        if why is None:
            bases[ctrl] = str(base)
        else:
            problems.append(f"{ctrl}: {why}")
    if bases:
        missing = [c for c in CONTROLLERS if c not in bases]
        problems.extend(
            f"{c}: no writable v1 hierarchy" for c in missing if not any(p.startswith(c) for p in problems)
        )
        return CgroupLayout("v1", bases, tuple(problems))
    unified = next((m for m in mounts if m.version == 2), None)
    if unified is None or own_v2 is None:
        return CgroupLayout("none", problems=(*problems, "no cgroup v1 controllers and no cgroup v2 mount"))
    own = _join(unified, own_v2)
    base = own if own_v2 in ("", "/") else own.parent
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return CgroupLayout("none", problems=(*problems, f"cgroup v2 at {base}: {exc}"))
    usable = [c for c in CONTROLLERS if c in available]
    if not usable:
        return CgroupLayout(
            "none", problems=(*problems, f"cgroup v2 at {base} delegates none of {', '.join(CONTROLLERS)}")
        )
    why = _probe_writable(base) if probe else None
    if why is not None:
        return CgroupLayout("none", problems=(*problems, f"cgroup v2: {why}"))
    problems.extend(f"{c}: not delegated on cgroup v2" for c in CONTROLLERS if c not in usable)
    return CgroupLayout("v2", {c: str(base) for c in usable}, tuple(problems))


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpu_cores: float | None = None
    pids_max: int | None = None


@dataclass
class CgroupSet:
    """The groups of one engine (one directory per v1 hierarchy, or one v2 directory).

    Serialisable (`to_dict`/`from_dict`) so a restarted node, or the sandbox supervisor, can find,
    inspect and remove them without the object that created them.
    """

    version: str
    dirs: dict[str, str]  # controller -> group directory (v2: the same directory for every controller)

    @classmethod
    def create(cls, layout: CgroupLayout, leaf: str, limits: Limits) -> CgroupSet:
        """Create `<base>/<parent_name>/<leaf>` in every usable hierarchy and write the limits."""
        if not _LEAF_RE.match(leaf):
            raise CgroupError(f"invalid cgroup name {leaf!r}: use letters, digits, '.', '_' or '-'")
        if not layout.bases:
            raise CgroupError("no usable cgroup hierarchy on this machine")
        wanted = {
            "memory": limits.memory_bytes is not None,
            "cpu": limits.cpu_cores is not None,
            "pids": limits.pids_max is not None,
        }
        dirs: dict[str, str] = {}
        made: list[Path] = []
        try:
            for ctrl, base in layout.bases.items():
                # Join every usable hierarchy, wanted or not, so `kill_all` and accounting see every process.
                parent = Path(base) / layout.parent_name
                group = parent / leaf
                if str(group) not in {d for d in dirs.values()}:
                    _make_group(parent, group, enable=layout.controllers if layout.version == "v2" else ())
                    made.append(group)
                dirs[ctrl] = str(group)
            cgroups = cls(layout.version, dirs)
            cgroups._write_limits(limits, wanted)
            return cgroups
        except OSError as exc:
            for group in made:
                with contextlib.suppress(OSError):
                    group.rmdir()
            raise CgroupError(f"cannot set up cgroup {leaf!r}: {exc}") from exc

    def _write_limits(self, limits: Limits, wanted: Mapping[str, bool]) -> None:
        v1 = self.version == "v1"
        if wanted["memory"] and "memory" in self.dirs and limits.memory_bytes is not None:
            mem = Path(self.dirs["memory"])
            if v1:
                _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
                # Without memsw an engine on a machine with swap pages out instead of being stopped.
                if (mem / "memory.memsw.limit_in_bytes").exists():
                    with contextlib.suppress(OSError):
                        _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            else:
                _write(mem / "memory.max", str(limits.memory_bytes))
                with contextlib.suppress(OSError):
                    _write(mem / "memory.swap.max", "0")
        if wanted["cpu"] and "cpu" in self.dirs and limits.cpu_cores is not None:
            quota = max(1000, round(limits.cpu_cores * CFS_PERIOD_US))
            cpu = Path(self.dirs["cpu"])
            if v1:
                _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(quota))
            else:
                _write(cpu / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        if wanted["pids"] and "pids" in self.dirs and limits.pids_max is not None:
            _write(Path(self.dirs["pids"]) / "pids.max", str(limits.pids_max))

    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a launcher writes its own pid into (each directory once)."""
        return [str(Path(d) / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in Path(procs).read_text().split())
        return found

    def read(self, controller: str, name: str) -> str | None:
        """One control file's content (e.g. read("cpu", "cpu.cfs_quota_us")), None when absent."""
        directory = self.dirs.get(controller)
        if directory is None:
            return None
        try:
            return (Path(directory) / name).read_text().strip()
        except OSError:
            return None

    def memory_limit(self) -> int | None:
        raw = self.read("memory", "memory.limit_in_bytes" if self.version == "v1" else "memory.max")
        if raw is None or raw == "max" or not raw.isdigit() or int(raw) >= 1 << 62:
            return None
        return int(raw)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this group (0 when unknown)."""
        raw = self.read("memory", "memory.oom_control" if self.version == "v1" else "memory.events")
        for line in (raw or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def kill_all(self, sig: int = signal.SIGKILL, *, rounds: int = 50) -> None:
        """Signal every process in the group until it is empty (bounded; racing forks are retried)."""
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(0.02)

    def remove(self, *, kill: bool = True) -> list[str]:
        """Remove the groups (killing what is left inside first); returns what could not be removed."""
        if kill:
            self.kill_all()
        left: list[str] = []
        for directory in dict.fromkeys(self.dirs.values()):
            group = Path(directory)
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        left.append(f"{group}: {exc.strerror}")
                        break
                    time.sleep(0.02)  # the last task is still being reaped
            else:
                left.append(f"{group}: still busy")
            # The shared parent goes too once empty; a concurrent create retries (see _make_group).
            with contextlib.suppress(OSError):
                group.parent.rmdir()
        return left

    def exists(self) -> bool:
        return any(Path(d).is_dir() for d in self.dirs.values())

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "dirs": dict(self.dirs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CgroupSet:
        dirs = data.get("dirs")
        if not isinstance(dirs, dict):
            raise CgroupError("malformed cgroup record")
        return cls(str(data.get("version", "v1")), {str(k): str(v) for k, v in dirs.items()})


def existing_groups(layout: CgroupLayout, leaf: Callable[[str], bool]) -> list[CgroupSet]:
    """The groups below `<base>/<parent_name>/` whose leaf name satisfies `leaf`, one set per name.

    For sweeping what a killed node left behind: a node SIGKILLed between creating an engine's groups
    and recording them leaves groups nobody would otherwise remove.
    """
    found: dict[str, dict[str, str]] = {}
    for ctrl, base in layout.bases.items():
        parent = Path(base) / layout.parent_name
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and leaf(entry.name):
                found.setdefault(entry.name, {})[ctrl] = str(entry)
    return [CgroupSet(layout.version, dirs) for _, dirs in sorted(found.items())]


def _make_group(parent: Path, group: Path, *, enable: Iterable[str]) -> None:
    """mkdir parent (shared by all engines) and the leaf; retry when a concurrent remove takes the parent."""
    controllers = list(enable)
    for _ in range(5):
        try:
            parent.mkdir(exist_ok=True)
        except FileExistsError:
            pass
        if controllers:
            _enable_v2(parent.parent, controllers)
            _enable_v2(parent, controllers)
        try:
            group.mkdir()
            return
        except FileNotFoundError:
            continue
    raise OSError(errno.ENOENT, f"{parent} keeps disappearing")


def _enable_v2(directory: Path, controllers: list[str]) -> None:
    control = directory / "cgroup.subtree_control"
    try:
        enabled = set(control.read_text().split())
    except OSError:
        return
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(control, " ".join(f"+{c}" for c in missing))


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from exc


# ----------------------------------------------------------------------------- how an engine ended


@dataclass(frozen=True)
class ExitStatus:
    returncode: int  # as the chain reported it (negative: signal; via bwrap 128+N)
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    reason: str
    pids_limit_hits: int = 0  # how often a fork failed at the pids limit (0 when unknown)

    def to_dict(self) -> dict[str, object]:
        return {
            "returncode": self.returncode,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "reason": self.reason,
            "pids_limit_hits": self.pids_limit_hits,
        }


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def exit_status(
    returncode: int,
    cgroup: CgroupSet | None,
    *,
    via_bwrap: bool = False,
    memory_limit: int | None = None,
    pids_limit: int | None = None,
) -> ExitStatus:
    """Decode a return code (Popen's: negative = signal; bwrap's: 128+N = signal N) with the cgroup's view.

    `memory_limit` / `pids_limit`: the engine's budget to name in the reason; by default the cgroup's own
    values (which include the sandbox's helpers' headroom).
    """
    code: int | None = returncode
    sig: int | None = None
    if returncode < 0:
        code, sig = None, -returncode
    elif via_bwrap and 128 < returncode < 128 + signal.NSIG:
        code, sig = None, returncode - 128
    oom = cgroup is not None and cgroup.oom_kills() > 0
    if oom:
        limit = memory_limit or (cgroup.memory_limit() if cgroup is not None else None)
        reason = (
            f"engine killed: memory limit {mib(limit)} exceeded" if limit else "engine killed: out of memory"
        )
    elif sig is not None:
        reason = f"engine killed by signal {signal_name(sig)}"
    else:
        reason = f"engine exited with code {code}"
    hits = 0
    if cgroup is not None:
        events = cgroup.read("pids", "pids.events") or ""
        raw = next((ln.split()[1] for ln in events.splitlines() if ln.startswith("max ")), "0")
        hits = int(raw) if raw.isdigit() else 0
    if hits and not oom and code != 0:
        shown = pids_limit if pids_limit is not None else cgroup.read("pids", "pids.max") if cgroup else None
        reason += f" (process limit {shown} reached {hits} times)"
    return ExitStatus(returncode, code, sig, oom, reason, hits)


def exit_reason(returncode: int, cgroup: CgroupSet | None, *, via_bwrap: bool = False) -> str:
    """One line for the task status, e.g. "engine killed: memory limit 256 MiB exceeded"."""
    return exit_status(returncode, cgroup, via_bwrap=via_bwrap).reason
