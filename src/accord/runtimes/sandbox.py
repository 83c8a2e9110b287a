"""The RunP sandbox: run an engine "with the least it needs" -- bubblewrap, cgroups, prlimit, a net shim.

Threat model.  An engine is code from an AppImage that the parties agreed to run; it may be buggy,
greedy or hostile.  It must be able to read and write its own task directory, read the host's programs
and libraries, and talk to exactly three node services (gateway egress, the node's local API with its
one-time token, DataMesh); peers reach its service ports through the gateway.  It must NOT be able to:
read the node directory (domain private key, node API token, the store), write anywhere but its task
dir, reach other host ports or the outside network, see or signal other processes, raise its own
limits, or take the machine down by memory, CPU or fork bombs.  And it must *survive a node restart*
(the runtime re-adopts it) -- so nothing here ties the engine's life to the node process.

The chain (`PreparedSandbox.argv`), outermost first, and why each piece is there:

1. supervisor (`python -I -c <boot> SRC supervise state.json -- ...`, `supervisor.py`): stays outside
   the sandbox and outside the cgroups (its memory is not the engine's), starts the rest in its own
   process group (so a `killpg` of the caller's group hits only the supervisor, which turns it into a
   graceful SIGTERM to every process *inside* the sandbox), waits, reads the cgroup's OOM counter,
   removes the cgroups (even when the node is down), writes ``.sandbox/exit.json`` and exits like the
   engine did (same code, or the same signal), so a wrapper around it records the right status.  It is
   a child subreaper, so nothing the chain orphans is left as a zombie.
2. ``sh -c <attach>``: writes its own pid into each ``cgroup.procs`` and only then execs the rest:
   race-free (the engine cannot run a single instruction outside its groups; children inherit them) and
   no ``preexec_fn`` in a threaded node.
3. ``prlimit``: RLIMIT_NOFILE always when asked; RLIMIT_DATA only as the memory fallback without a
   memory cgroup (per process, heap and private writable mappings: a poor proxy, hence reported as
   such; not RLIMIT_AS, which counts address space that runtimes like XLA only reserve).
4. ``bwrap``: ``--ro-bind / /`` (read the host's programs, write nothing), then ``--tmpfs`` over the node
   directory (key, token, store), ``/tmp`` (private, mode 1777: SPU's libpsi writes trace files there),
   ``/run`` (host unix sockets -- docker, systemd, databases -- stay connectable through a read-only
   mount, so they are hidden) and home directories (``/root``, the node user's: keys, cloud
   credentials; the chain's own Python is bound back read-only when it lives there); ``--dev``/``--proc``
   fresh, ``/dev/shm`` a 1777 tmpfs (multiprocessing); own pid, ipc, uts, cgroup namespaces and (policy
   "isolated") its own network namespace with only a loopback; ``--new-session`` (no TIOCSTI);
   ``--die-with-parent``: the parent is the *supervisor* (detached from the node), so this does not tie
   the engine to the node -- it makes a SIGKILL of the supervisor (the runtime's last resort) take the
   sandbox with it instead of leaving an orphaned namespace.  The task dir is bound read-write at its
   real path (paths in configs stay valid); ``.sandbox`` read-only on top (bridge sockets, env, state).
5. ``setpriv`` (node running as root): bwrap keeps only CAP_SETUID/SETGID for this step, which drops to
   uid/gid 65534 with no capabilities, no supplementary groups and no_new_privs.  Without it the engine
   would be uid 0 without capabilities -- still the *owner* of every root-owned 0600 file (e.g.
   /etc/shadow, other domains' keys).  A node not running as root uses an unprivileged user namespace
   and the engine keeps the node's uid (its files outside the node dir are then readable: say so).
6. the in-sandbox stub (`netshim.py`): reads the engine's env from ``.sandbox/env.json`` (so no root
   process in the chain ever runs with the engine's env, e.g. LD_PRELOAD, and secrets stay out of argv),
   bridges the allowed ports (see netshim), then runs the engine.

The task dir itself.  The engine (uid 65534) gets its files chowned, but entries named in
`SandboxSpec.protected` (the runtime's engine log) and ``.sandbox`` stay root's, and the task dir
stays root's too -- group 65534, mode 1771 (sticky): the engine creates and removes its own files but
cannot rename, replace or delete the node's, so whatever root later reads or writes there (the log, the
launcher's records in ``.sandbox/run``) is what root put there.  Inside bwrap the protected entries are
also bound read-only (a node that is not root shares its uid with the engine: the mounts protect them).

Limits are the *engine's* budget: the cgroups get `MEMORY_HEADROOM` and `PIDS_HEADROOM` on top for the
sandbox's own processes (bwrap's monitor and init, the in-sandbox bridge), and the exit reason names
the budget ("engine killed: memory limit 64 MiB exceeded").  Limits that were asked for but cannot be
enforced on this machine are listed in `PreparedSandbox.warnings` and in its `describe()`; nothing is
silently dropped.  What the machine allows is found by `isolation.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accord.errors import AccordError, ErrorCode
from accord.runtimes import netshim
from accord.runtimes.cgroups import CgroupSet, ExitStatus, Limits, exit_reason, exit_status, mib
from accord.runtimes.isolation import NOBODY, Isolation, detect_isolation, drop_root, namespace_flags
from accord.runtimes.netshim import HostBridge, NetworkPolicy
from accord.runtimes.supervisor import BOOT, ENV_FILE, EXIT_FILE, SAFE_PATH, SRC

__all__ = [
    "NOBODY",
    "ExitStatus",
    "HostBridge",
    "Isolation",
    "NetworkPolicy",
    "PreparedSandbox",
    "SandboxError",
    "SandboxSpec",
    "detect_isolation",
    "exit_reason",
    "exit_status",
    "prepare_sandbox",
    "read_exit_status",
]

CONTROL_DIR = ".sandbox"
STATE_FILE = "state.json"
# The sandbox's own processes share the engine's cgroups: bwrap's monitor and namespace init (~2 MiB) and
# the in-sandbox bridge (a Python asyncio process, ~20 MiB RSS).  Limits given for the *engine* are
# raised by this much in the cgroup, so an engine gets the budget it asked for.
MEMORY_HEADROOM = 32 << 20
PIDS_HEADROOM = 4  # bwrap's monitor, the namespace's init, the bridge, and one spare
_SAFE_PATH = SAFE_PATH
_BOOT, _SRC = BOOT, SRC
_ATTACH = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || '
    '{ echo "accord sandbox: cannot join cgroup $1" >&2; exit 125; }; shift; n=$((n-1)); done; exec "$@"'
)


class SandboxError(AccordError):
    """The sandbox could not be prepared (the message says what is missing and how to fix it)."""

    default_code = ErrorCode.UNKNOWN


# ----------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SandboxSpec:
    task_dir: Path
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    node_dir: Path | None = None  # hidden from the engine (key, token, store); may contain task_dir
    memory_bytes: int | None = None
    cpu_cores: float | None = None
    pids_max: int | None = None
    open_files: int | None = None
    read_only_paths: Sequence[Path] = ()  # re-exposed under a hidden path, or made read-only in task_dir
    read_write_paths: Sequence[Path] = ()
    hidden_paths: Sequence[Path] = ()  # more host paths to cover (directories get an empty tmpfs)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    cgroup_name: str | None = None  # leaf name of the engine's cgroups; unique by default
    uid: int | None = None  # as root: default 65534; otherwise the node's uid is kept
    gid: int | None = None
    die_with_supervisor: bool = True
    # Top-level entries of task_dir that stay the node's (e.g. "engine.log"): never chowned, read-only
    # inside the sandbox.  As root, task_dir itself then stays root's too (group: the engine's, sticky).
    protected: Sequence[str] = ()


# ------------------------------------------------------------------------------------ exit status


def read_exit_status(task_dir: Path) -> ExitStatus | None:
    """What the supervisor recorded when the engine ended; None while it runs (or if it was killed)."""
    try:
        data = json.loads((Path(task_dir) / CONTROL_DIR / EXIT_FILE).read_text())
        return ExitStatus(
            int(data["returncode"]),
            data["exit_code"],
            data["signal"],
            bool(data["oom_killed"]),
            data["reason"],
            int(data.get("pids_limit_hits") or 0),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------ preparation


@dataclass
class PreparedSandbox:
    task_dir: Path
    argv: list[str]  # what to exec (under the runtime's launcher, in the task dir, stdin /dev/null)
    env: dict[str, str]  # a minimal env for that exec; the engine's own env is in .sandbox/env.json
    cgroup: CgroupSet | None
    via_bwrap: bool
    sandbox_uid: int
    network: NetworkPolicy
    warnings: list[str]
    isolation_text: str
    memory_bytes: int | None = None  # the engine's budgets (the cgroup adds MEMORY_HEADROOM/PIDS_HEADROOM)
    pids_max: int | None = None

    @property
    def control_dir(self) -> Path:
        return self.task_dir / CONTROL_DIR

    def describe(self) -> str:
        text = self.isolation_text
        return f"{text}; NOT enforced: {'; '.join(self.warnings)}" if self.warnings else text

    def host_bridge(self, **kwargs: Any) -> HostBridge:
        """The host half of the network shim for this sandbox (start it before the engine)."""
        return HostBridge(
            self.task_dir, self.network.outbound, self.network.inbound, sandbox_uid=self.sandbox_uid, **kwargs
        )

    @property
    def needs_bridge(self) -> bool:
        return (
            self.via_bwrap
            and self.network.mode == "isolated"
            and bool(self.network.outbound or self.network.inbound)
        )

    def exit_status(self) -> ExitStatus | None:
        return read_exit_status(self.task_dir)

    def cleanup(self) -> list[str]:
        """Remove the cgroups (killing leftovers) and the engine env file; idempotent. Returns problems."""
        (self.control_dir / ENV_FILE).unlink(missing_ok=True)
        return self.cgroup.remove() if self.cgroup is not None else []

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task_dir": str(self.task_dir)}

    @classmethod
    def load(cls, task_dir: Path) -> PreparedSandbox:
        """Re-open a prepared sandbox from its state file (a restarted node re-adopting an engine)."""
        try:
            data = json.loads((Path(task_dir) / CONTROL_DIR / STATE_FILE).read_text())
            data["task_dir"] = Path(data["task_dir"])
            data["cgroup"] = CgroupSet.from_dict(data["cgroup"]) if data["cgroup"] else None
            data["network"] = NetworkPolicy.from_dict(data["network"])
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"no usable sandbox record in {task_dir}: {exc}") from exc


def prepare_sandbox(spec: SandboxSpec, isolation: Isolation | None = None) -> PreparedSandbox:
    """Create the control dir, cgroups (with limits) and env file; build the command chain.

    Call `cleanup()` after the engine ended if the supervisor could not (it was SIGKILLed) or the
    command was never started.
    """
    iso = isolation or detect_isolation()
    task = Path(spec.task_dir).resolve()
    if not task.is_dir():
        raise SandboxError(f"task directory {task} does not exist")
    if not spec.argv:
        raise SandboxError("no engine command")
    _check_network(spec.network)
    warnings: list[str] = []
    uid, gid = _sandbox_ids(spec, iso, task, warnings)
    control = _make_control_dir(task, uid, gid)
    if iso.as_root and uid != 0:
        _chown_tree(task, uid, gid, skip={control.name, *spec.protected})
        if spec.protected:
            _guard_task_dir(task, gid)
    cgroup = _make_cgroups(spec, iso, task, warnings)
    try:
        rlimits = _rlimit_flags(spec, iso, cgroup, warnings)
        env = {"HOME": str(task), **spec.env}
        _write_private_json(control / ENV_FILE, env, uid, gid)
        network = spec.network
        if not iso.sandboxed and network.mode == "isolated":
            warnings.append("network isolation (no bwrap): the engine shares the host's network")
        chain = [*rlimits, *_sandbox_flags(spec, iso, task, uid, gid), *_stub(spec, iso, task)]
        if cgroup is not None:
            procs = cgroup.procs_files()
            chain = [iso.shell, "-c", _ATTACH, "accord-attach", str(len(procs)), *procs, *chain]
        argv = [sys.executable, "-I", "-c", _BOOT, _SRC, "supervise", str(control / STATE_FILE), "--", *chain]
        text = iso.describe()
        if iso.sandboxed and network.mode == "host":
            text += " [this engine: host network, by request]"
        if iso.sandboxed and spec.node_dir is None:
            warnings.append("hiding the node directory (no node_dir given)")
        prepared = PreparedSandbox(
            task, argv, {"PATH": _SAFE_PATH, "LANG": "C.UTF-8"}, cgroup, iso.sandboxed, uid,
            network, warnings, text, spec.memory_bytes, spec.pids_max,
        )  # fmt: skip
        _write_json(control / STATE_FILE, prepared.to_dict())
        (control / EXIT_FILE).unlink(missing_ok=True)
        return prepared
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise


def _check_network(policy: NetworkPolicy) -> None:
    ports = [port for _, port in policy.outbound.values()] + list(policy.inbound)
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        raise SandboxError(f"bridged ports must be distinct and valid (one loopback inside): {ports}")
    bad = [n for n in policy.outbound if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n)]
    if bad:
        raise SandboxError(f"invalid bridged service names {bad}: use letters, digits, '_' or '-'")


def _sandbox_ids(spec: SandboxSpec, iso: Isolation, task: Path, warnings: list[str]) -> tuple[int, int]:
    if not iso.as_root:
        if spec.uid is not None and spec.uid != os.getuid():
            warnings.append(f"uid {spec.uid} (the node is not root; the engine keeps uid {os.getuid()})")
        return os.getuid(), os.getgid()
    uid = NOBODY if spec.uid is None else spec.uid
    gid = NOBODY if spec.gid is None else spec.gid
    if uid == 0:
        warnings.append("an unprivileged uid (uid 0 was asked for)")
    elif iso.setpriv is None:
        warnings.append(f"uid {uid} (setpriv not found): the engine runs as root")
        return 0, 0
    elif not iso.sandboxed and unreachable_paths(task):
        warnings.append(f"uid {uid}: without bwrap {task} or Python is not reachable by it; runs as root")
        return 0, 0
    return uid, gid


def unreachable_paths(task_dir: Path) -> list[Path]:
    """What an unprivileged engine uid could not reach without bwrap: the task dir, or the interpreter
    the chain runs (then, as root, the engine keeps uid 0; `isolation()` says so)."""
    return [p for p in (task_dir, *sorted(_needed_paths())) if not reachable_by_others(p)]


def reachable_by_others(path: Path) -> bool:
    """Whether every directory on the way to `path` lets other users through (o+x)."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _make_control_dir(task: Path, uid: int, gid: int) -> Path:
    """A fresh `.sandbox` (root-owned, read-only in the sandbox) with `out/` (host sockets) and `in/`.

    Whatever a previous run left there is removed first, without following links: an engine that ran
    without bwrap owned the task dir and could have planted symlinks for root to write through.
    """
    control = task / CONTROL_DIR
    if control.is_symlink() or (control.exists() and not control.is_dir()):
        control.unlink()
    elif control.exists():
        shutil.rmtree(control)
    control.mkdir(mode=0o755)
    (control / "out").mkdir(mode=0o755)
    (task / netshim.IN_DIR).mkdir(mode=0o700)
    os.chmod(control, 0o755)  # whatever the umask: the engine's uid must reach out/, in/ and its env
    os.chmod(control / "out", 0o755)
    if os.geteuid() == 0:
        os.chown(control, 0, 0)
        os.chown(control / "out", 0, 0)
        os.chown(task / netshim.IN_DIR, uid, gid)
    return control


def _chown_tree(task: Path, uid: int, gid: int, *, skip: set[str]) -> None:
    os.lchown(task, uid, gid)
    for root, dirs, files in os.walk(task):
        top = Path(root) == task
        if top:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in (*dirs, *files):
            if not (top and name in skip):
                os.lchown(os.path.join(root, name), uid, gid)


def _guard_task_dir(task: Path, gid: int) -> None:
    """Keep the task dir root's: group-writable for the engine, sticky, so the engine can create and
    remove its *own* files but cannot rename, replace or delete root's (`.sandbox`, the engine log): a
    later read or write by root in this directory then never lands on something the engine planted."""
    os.chown(task, 0, gid)
    os.chmod(task, 0o1771)


def _make_cgroups(spec: SandboxSpec, iso: Isolation, task: Path, warnings: list[str]) -> CgroupSet | None:
    limits = Limits(
        None if spec.memory_bytes is None else spec.memory_bytes + MEMORY_HEADROOM,
        spec.cpu_cores,
        None if spec.pids_max is None else spec.pids_max + PIDS_HEADROOM,
    )
    asked = {"memory": spec.memory_bytes, "cpu": spec.cpu_cores, "pids": spec.pids_max}
    usable = iso.cgroups.controllers
    for ctrl, value in asked.items():
        if value is not None and ctrl not in usable and not (ctrl == "memory" and iso.prlimit):
            warnings.append(f"{ctrl} limit {value} (no writable {ctrl} cgroup)")
    if not usable:
        return None
    leaf = spec.cgroup_name or f"{task.name[:150]}-{uuid.uuid4().hex[:8]}"
    return CgroupSet.create(iso.cgroups, leaf, limits)


def _rlimit_flags(
    spec: SandboxSpec, iso: Isolation, cgroup: CgroupSet | None, warnings: list[str]
) -> list[str]:
    flags: list[str] = []
    if spec.open_files is not None:
        flags.append(f"--nofile={spec.open_files}:{spec.open_files}")
    if spec.memory_bytes is not None and (cgroup is None or "memory" not in cgroup.dirs):
        flags.append(f"--data={spec.memory_bytes}:{spec.memory_bytes}")
        warnings.append(f"memory limit {mib(spec.memory_bytes)} only as RLIMIT_DATA (per process, no cgroup)")
    if not flags:
        return []
    if iso.prlimit is None:
        warnings.append("open files / data-size limits (prlimit not found)")
        return []
    return [iso.prlimit, *flags, "--"]


def _covers(spec: SandboxSpec, task: Path) -> list[Path]:
    # Home directories hold keys and cloud credentials; what the chain itself needs from one (e.g. a
    # pyenv Python under /root) is bound back read-only by `_needed_paths`.
    covers = [Path("/tmp"), Path("/run"), Path("/root"), Path.home().resolve()]
    if spec.node_dir is not None:
        covers.append(Path(spec.node_dir).resolve())
    covers.extend(Path(p).resolve() for p in spec.hidden_paths)
    return [c for c in dict.fromkeys(covers) if c != Path("/")]


def _sandbox_flags(spec: SandboxSpec, iso: Isolation, task: Path, uid: int, gid: int) -> list[str]:
    if not iso.sandboxed or iso.bwrap is None:
        if iso.as_root and uid != 0 and iso.setpriv:
            return drop_root(iso.setpriv, uid, gid)[5:]  # setpriv and its flags, without bwrap's part
        return []
    isolated = spec.network.mode == "isolated"
    flags = [iso.bwrap, *namespace_flags(iso.as_root, isolated_net=isolated), "--ro-bind", "/", "/"]
    covers = _covers(spec, task)
    for cover in covers:
        if cover == Path("/tmp"):  # sticky and world-writable like a real /tmp (engines write there)
            flags += ["--perms", "1777", "--tmpfs", "/tmp"]
        elif cover.is_dir():
            flags += ["--tmpfs", str(cover)]
        elif cover.exists():
            flags += ["--ro-bind", "/dev/null", str(cover)]
    # bwrap's /dev/shm is a root-owned directory: multiprocessing's semaphores need a writable tmpfs.
    flags += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    flags += ["--new-session", "--hostname", "accord-sandbox"]
    if spec.die_with_supervisor:
        flags.append("--die-with-parent")
    binds: list[tuple[str, Path]] = [("--bind", task)]
    binds += [("--ro-bind", p) for p in _needed_paths() if _under_any(p, covers)]
    binds += [("--ro-bind", Path(p).resolve()) for p in spec.read_only_paths]
    binds += [("--bind", Path(p).resolve()) for p in spec.read_write_paths]
    binds += [("--ro-bind", task / CONTROL_DIR), ("--bind", task / netshim.IN_DIR)]
    binds += [("--ro-bind", task / name) for name in spec.protected if (task / name).exists()]
    for kind, path in sorted(binds, key=lambda b: len(b[1].parts)):
        flags += [kind, str(path), str(path)]
    # Mount points bwrap had to create inside a tmpfs copy the source's mode (0700 parents would lock
    # the unprivileged engine out of its own task dir by absolute path): open them up, never a real dir.
    targets = [p for _, p in binds]
    for anc in sorted({a for p in targets for a in p.parents if _under_any(a, covers, strict=True)}):
        if not _under_any(anc, targets):
            flags += ["--chmod", "0755", str(anc)]
    flags += ["--chdir", str(task)]
    if iso.as_root and uid != 0 and iso.setpriv:
        return [*flags, *drop_root(iso.setpriv, uid, gid)]
    return [*flags, "--"]


def _needed_paths() -> set[Path]:
    """What the in-sandbox stub needs to start: the interpreter, its prefix and the shim's source; and
    the directory holding the `accord` package, so built-in engines (`python -m accord.engines.X`) run
    from an editable install too."""
    exe = Path(sys.executable).resolve()
    return {
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
        exe.parent,
        Path(netshim.__file__).resolve().parents[2],
    }


def _under_any(path: Path, roots: Sequence[Path], *, strict: bool = False) -> bool:
    return any((path != r or not strict) and path.is_relative_to(r) for r in roots)


def _stub(spec: SandboxSpec, iso: Isolation, task: Path) -> list[str]:
    stub = [
        sys.executable,
        "-I",
        str(Path(netshim.__file__).resolve()),
        "--env-file",
        f"{CONTROL_DIR}/{ENV_FILE}",
    ]
    if spec.die_with_supervisor and not iso.sandboxed:
        stub.append("--pdeathsig")
    if iso.sandboxed and spec.network.mode == "isolated":
        stub += [f"--out={port}={name}" for name, (_, port) in spec.network.outbound.items()]
        stub += [f"--in={port}" for port in spec.network.inbound]
    return [*stub, "--", *spec.argv]


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _write_private_json(path: Path, data: Mapping[str, Any], uid: int, gid: int) -> None:
    _write_json(path, data)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
