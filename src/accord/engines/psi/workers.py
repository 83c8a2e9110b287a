"""Masking sharded across worker processes, in order, with a bounded amount of work in flight.

X25519 in `cryptography` holds the GIL, so threads would not help: the masking runs in a
`ProcessPoolExecutor`.  Choices:

- **forkserver, not fork.**  The engine starts its HTTP server and sender threads before the first
  masking job; forking a process that has threads can copy a lock held by another thread.  The fork
  server is a clean single-threaded process; workers import only this module and `crypto` (no pyarrow),
  about 25 MB each.
- **The scalar travels once**, as the pool initializer's argument, not with every job.
- **Chunks of `CHUNK_POINTS` points** (4096 = 128 KiB, ~0.15 s of work): large enough that pickling and
  IPC are noise, small enough that both streams of work (our own points and the peer's) interleave and
  all workers stay busy until the very end.
- `submit` returns a `MaskJob` whose `result()` joins the chunk results in order; callers keep a few
  jobs in flight (see `protocol.py`), which bounds memory to a few batches of points.
- `workers=0` masks in the calling thread: no processes, for tests and tiny inputs.

Default worker count: the CPUs this process may run on (`os.sched_getaffinity`), so an engine pinned
with `taskset -c 0` uses one worker instead of oversubscribing the core, further capped by a cgroup
CPU quota (v1 `cpu.cfs_quota_us` or v2 `cpu.max`, rounded up) when the runtime sets one.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from accord.engines.psi.crypto import POINT_SIZE, MaskKey

CHUNK_POINTS = 4096

_worker_key: MaskKey | None = None


def _init_worker(scalar: bytes) -> None:
    global _worker_key
    _worker_key = MaskKey(scalar)


def _mask_in_worker(points: bytes) -> bytes:
    if _worker_key is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker not initialised")
    return _worker_key.mask(points)


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by this process's cgroup CPU quota, or None when there is no quota."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        try:
            if controllers == "":  # cgroup v2: "max 100000" or "200000 100000"
                with open(os.path.join(root, rel, "cpu.max")) as fh:
                    quota, period = fh.read().split()[:2]
                if quota != "max":
                    return int(quota) / int(period)
            elif "cpu" in controllers.split(","):
                base = os.path.join(root, controllers, rel)
                with open(os.path.join(base, "cpu.cfs_quota_us")) as fh:
                    quota_us = int(fh.read())
                with open(os.path.join(base, "cpu.cfs_period_us")) as fh:
                    period_us = int(fh.read())
                if quota_us > 0 and period_us > 0:
                    return quota_us / period_us
        except (OSError, ValueError):
            continue
    return None


def default_workers() -> int:
    """The number of CPUs this process may use (respects taskset/cpusets and a cgroup CPU quota)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


class MaskJob:
    """The masking of one batch: chunk futures whose results join in order."""

    def __init__(self, parts: list[Future[bytes]]) -> None:
        self._parts = parts

    def done(self) -> bool:
        return all(part.done() for part in self._parts)

    def result(self, timeout: float | None = None) -> bytes:
        return b"".join(part.result(timeout) for part in self._parts)


class Masker:
    """Masks point batches with one secret scalar, on `workers` processes (0 = in the caller)."""

    def __init__(self, scalar: bytes, workers: int, *, chunk_points: int = CHUNK_POINTS) -> None:
        self.workers = workers
        self._chunk_bytes = max(1, chunk_points) * POINT_SIZE
        self._inline = MaskKey(scalar) if workers == 0 else None
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_init_worker,
                initargs=(scalar,),
            )

    def submit(self, points: bytes) -> MaskJob:
        parts: list[Future[bytes]] = []
        if self._pool is None:
            assert self._inline is not None
            future: Future[bytes] = Future()
            try:
                future.set_result(self._inline.mask(points))
            except BaseException as exc:
                future.set_exception(exc)
            parts.append(future)
            return MaskJob(parts)
        for start in range(0, len(points), self._chunk_bytes):
            parts.append(self._pool.submit(_mask_in_worker, points[start : start + self._chunk_bytes]))
        return MaskJob(parts)

    def warm_up(self) -> None:
        """Start the worker processes now (they import `cryptography`), while the input is being read.

        Never raises: a pool that cannot start fails the first real `submit` with the actual error.
        """
        if self._pool is not None:
            try:
                futures = [self._pool.submit(_mask_in_worker, b"") for _ in range(self.workers)]
                for future in futures:
                    future.result()
            except Exception:
                return

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Masker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
