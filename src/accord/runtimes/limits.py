"""Per-engine resource limits: what an AppImage asks for, the node's defaults, and how they are read.

An AppImage states its needs the Kubernetes way (`spec.resources`: `cpu: "500m"`, `memory: "2Gi"`), so
Kuscia AppImages keep their meaning; what it leaves empty comes from the runtime's defaults.  RunP turns
the result into cgroup limits (memory, CPU quota, pids) and an RLIMIT_NOFILE (see `sandbox.py`).

Why these defaults (`DEFAULT_LIMITS`): they must let the engines in the box run unchanged -- the built-in
PSI (a parent of ~100 MB with pyarrow, a fork server and N workers of ~26 MB each), SPU from its own
venv (~300 MB RSS at import, libpsi traces in /tmp) -- while still stopping a runaway engine from taking
the machine: 2 GiB of memory, 2 CPUs of quota, 1024 processes *and threads* (the pids controller counts
threads: gRPC, Arrow and BLAS pools add up) and 4096 open files.  A value is a budget for the engine;
the sandbox adds its own helpers' headroom on top (`sandbox.MEMORY_HEADROOM`, `PIDS_HEADROOM`).

Quantities are parsed strictly: an unreadable value is an error naming the AppImage and the field, not a
silent default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.appimage import ResourceNeeds

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class EngineLimits:
    """Limits for one engine; None means "not limited"."""

    memory_bytes: int | None = 2 << 30
    cpu_cores: float | None = 2.0
    pids: int | None = 1024
    open_files: int | None = 4096

    def describe(self) -> str:
        parts = [
            f"memory {format_bytes(self.memory_bytes)}" if self.memory_bytes else "memory unlimited",
            f"{self.cpu_cores:g} CPUs" if self.cpu_cores else "CPU unlimited",
            f"{self.pids} processes" if self.pids else "processes unlimited",
            f"{self.open_files} open files" if self.open_files else "open files unlimited",
        ]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, int | float | None]:
        return {
            "memory_bytes": self.memory_bytes,
            "cpu_cores": self.cpu_cores,
            "pids": self.pids,
            "open_files": self.open_files,
        }


DEFAULT_LIMITS = EngineLimits()


def format_bytes(n: int) -> str:
    """ "2 GiB" for whole GiB, else MiB as the sandbox names memory limits ("64 MiB", "1.5 MiB")."""
    return f"{n >> 30} GiB" if n and n % (1 << 30) == 0 else f"{n / (1 << 20):g} MiB"


def _split(text: str, what: str) -> tuple[float, str]:
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{what} {text!r} is not a quantity")
    number = float(match.group(1)) * (10 ** int(match.group(2)) if match.group(2) else 1)
    return number, match.group(3)


def parse_memory(text: str) -> int:
    """Bytes from a Kubernetes memory quantity: "2Gi", "512Mi", "1G", "1e9", "1048576"."""
    number, suffix = _split(text, "memory")
    factor = _BINARY.get(suffix) or _DECIMAL.get(suffix)
    if factor is None:
        raise ValueError(f"memory {text!r}: unknown unit {suffix!r} (use Ki, Mi, Gi, k, M, G or none)")
    value = math.ceil(number * factor)
    if value <= 0:
        raise ValueError(f"memory {text!r} must be positive")
    return value


def parse_cpu(text: str) -> float:
    """Cores from a Kubernetes CPU quantity: "2", "0.5", "500m"."""
    number, suffix = _split(text, "cpu")
    if suffix == "m":
        number /= 1000
    elif suffix:
        raise ValueError(f"cpu {text!r}: unknown unit {suffix!r} (use cores, '2', or millicores, '500m')")
    if number <= 0:
        raise ValueError(f"cpu {text!r} must be positive")
    return number


def limits_for(resources: ResourceNeeds, defaults: EngineLimits, app_image: str) -> EngineLimits:
    """The AppImage's `resources` over the runtime's defaults; InvalidArgument names a bad value."""
    limits = defaults
    try:
        if resources.memory.strip():
            limits = replace(limits, memory_bytes=parse_memory(resources.memory))
        if resources.cpu.strip():
            limits = replace(limits, cpu_cores=parse_cpu(resources.cpu))
    except ValueError as exc:
        raise InvalidArgument(
            f"AppImage {app_image!r}: spec.resources: {exc}", code=ErrorCode.APPIMAGE_INVALID
        ) from exc
    return limits
