"""What this machine lets RunP enforce: bubblewrap (proved by a real trial run), cgroups, prlimit, setpriv.

Why a trial run and not just `which bwrap`: bwrap may be installed but unusable (no user namespaces for
a non-root node, a container that forbids mount namespaces, a seccomp profile); the only honest answer
is to start a sandbox exactly as engines will get it (read-only root, own namespaces and network, the
drop to uid 65534) and see it succeed.  The answer is cached for the process (`detect_isolation`): it
takes a fraction of a second and cannot change while the node runs.  `Isolation.describe()` is what
`accord node status` shows (with the runtime's additions, see `ProcessRuntime.isolation`).

As root, no user namespace is used (one would map only uid 0, so setpriv could not drop to 65534);
bwrap keeps only CAP_SETUID/SETGID for the `setpriv` step.  A node that is not root sandboxes in an
unprivileged user namespace and its engines keep the node's uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accord.runtimes.cgroups import CgroupLayout, detect_cgroups
from accord.runtimes.supervisor import BOOT, SAFE_PATH, SRC

NOBODY = 65534


@dataclass(frozen=True)
class Isolation:
    """What this machine lets RunP enforce; `detect_isolation()` finds it once per process."""

    bwrap: str | None  # path of a bwrap that passed a real trial run
    bwrap_version: str
    bwrap_problem: str  # why bwrap is not used ("" when it is)
    user_namespaces: bool
    as_root: bool
    setpriv: str | None
    prlimit: str | None
    cgroups: CgroupLayout
    shell: str = "/bin/sh"

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        parts: list[str] = []
        if self.bwrap:
            who = (
                f"engines as uid {NOBODY} without capabilities"
                if self.as_root
                else "engines keep the node's uid (user namespace)"
            )
            parts.append(
                f"bwrap {self.bwrap_version} (read-only root, node dir hidden, private /tmp and /run, own "
                f"pid/ipc/uts namespaces, no network but the loopback shim, {who})"
            )
        else:
            parts.append(
                f"no sandbox ({self.bwrap_problem}; engines share the host's network and filesystem: "
                "apt-get install bubblewrap)"
            )
        parts.append(self.cgroups.describe())
        parts.append("prlimit (open files)" if self.prlimit else "no prlimit")
        return " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "describe": self.describe()}


_detected: Isolation | None = None


def detect_isolation(*, refresh: bool = False) -> Isolation:
    """Probe once (a real bwrap run, a cgroup mkdir) and cache the answer for the process."""
    global _detected
    if _detected is None or refresh:
        _detected = _detect()
    return _detected


def _user_namespaces() -> bool:
    try:
        if int(Path("/proc/sys/user/max_user_namespaces").read_text()) <= 0:
            return False
    except (OSError, ValueError):
        return False
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    return not clone.exists() or clone.read_text().strip() == "1"


def _detect() -> Isolation:
    as_root = os.geteuid() == 0
    setpriv = shutil.which("setpriv", path=SAFE_PATH)
    prlimit = shutil.which("prlimit", path=SAFE_PATH)
    userns = _user_namespaces()
    layout = detect_cgroups()
    bwrap = shutil.which("bwrap", path=SAFE_PATH)
    version, problem = "", ""
    if bwrap is None:
        problem = "bwrap not installed"
    elif as_root and setpriv is None:
        problem = "setpriv (util-linux) not found to drop root inside the sandbox"
    else:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10)
            version = out.stdout.strip().removeprefix("bubblewrap ")
        trial = [bwrap, *namespace_flags(as_root, isolated_net=True), "--ro-bind", "/", "/"]
        trial += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp", "--new-session"]
        trial += drop_root(setpriv) if as_root and setpriv else ["--"]
        trial.append(shutil.which("true", path=SAFE_PATH) or "/bin/true")
        try:  # under a reaping parent: bwrap's namespace init would otherwise be orphaned as a zombie
            run = subprocess.run(
                [sys.executable, "-I", "-c", BOOT, SRC, "trial", *trial],
                capture_output=True, text=True, timeout=20, env={"PATH": SAFE_PATH}, cwd="/",
            )  # fmt: skip
            if run.returncode != 0:
                problem = f"bwrap trial run failed: {run.stderr.strip() or run.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"bwrap trial run failed: {exc}"
        if problem:
            bwrap = None
    return Isolation(bwrap, version, problem, userns, as_root, setpriv, prlimit, layout)


def namespace_flags(as_root: bool, *, isolated_net: bool) -> list[str]:
    # As root no user namespace is needed (and one would map only uid 0, so setpriv could not drop).
    if as_root:
        flags = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        return [*flags, "--unshare-net"] if isolated_net else flags
    return ["--unshare-all"] if isolated_net else ["--unshare-all", "--share-net"]


def drop_root(setpriv: str, uid: int = NOBODY, gid: int = NOBODY) -> list[str]:
    return [
        "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--", setpriv,
        f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
        "--no-new-privs", "--",
    ]  # fmt: skip
