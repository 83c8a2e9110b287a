"""A per-object serialised work queue: one worker per key, keys in parallel, bursts coalesced.

Why this shape (kopf's `queueing.py`): a reconcile of one object must never overlap with another
reconcile of the *same* object (two writers of one status would fight over resource versions and could
start an engine twice), but different objects should progress independently, so one slow job never
delays another.  Hence:

- **One worker per key** (`(kind, name)` in the manager; here any hashable).  A worker is an asyncio task
  that reconciles its key until nothing more is asked of it, then exits; idle keys cost nothing.
- **Coalescing.**  Enqueueing a key that already has a worker only marks it dirty and wakes the worker;
  ten watch events during one reconcile produce one more reconcile, not ten.  A reconcile always reads
  the latest object from the store, so nothing is lost by merging.
- **Bounded parallelism.**  A semaphore caps how many reconciles run at once (`max_concurrent`); workers
  beyond it wait for a slot without holding one while they sleep between retries.
- **Outcomes, not exceptions.**  A reconcile returns an `Outcome` (done, retry after a delay, permanent
  failure).  Raising `TemporaryError(delay=...)` means retry, `PermanentError(reason)` means give up
  until the next change; any other exception is a bug or an outage: it is logged with its traceback and
  retried with exponential backoff (`Backoff`, 0.2 s doubling to 30 s by default).  Nothing escapes the
  worker; only cancellation stops it.
- **Wake-ups.**  A retry *requested* by the reconciler (`Outcome.retry`, `TemporaryError`) is cut short by
  a new enqueue of the key: the object changed, so look again now.  An error backoff is not: a reconcile
  that crashes and also writes the object would otherwise spin.

The queue owns its worker tasks; `aclose()` cancels and awaits them all (the manager calls it when it is
cancelled), so a stopped node leaves no stray tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from accord.errors import AccordError, ErrorCode

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class TemporaryError(AccordError):
    """Raised by a reconciler: not now, try again after `delay` seconds (or sooner if the object changes)."""

    def __init__(self, message: str = "", *, delay: float = 1.0, code: ErrorCode | int | None = None) -> None:
        super().__init__(message or f"retry in {delay:g} s", code=code, retryable=True)
        self.delay = delay


class PermanentError(AccordError):
    """Raised by a reconciler: this cannot succeed; stop retrying until the object changes."""

    def __init__(self, reason: str, *, code: ErrorCode | int | None = None) -> None:
        super().__init__(reason, code=code, retryable=False)
        self.reason = reason


class OutcomeKind(StrEnum):
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What one reconcile step concluded."""

    kind: OutcomeKind
    delay: float = 0.0
    reason: str = ""

    @classmethod
    def done(cls) -> Outcome:
        return cls(OutcomeKind.DONE)

    @classmethod
    def retry(cls, delay: float, reason: str = "") -> Outcome:
        return cls(OutcomeKind.RETRY, delay=max(0.0, delay), reason=reason)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.FAILED, reason=reason)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff for unexpected errors: `initial * factor**(n-1)`, capped at `maximum`."""

    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.maximum, self.initial * self.factor ** (failures - 1)))


class WorkQueue(Generic[K]):
    """Serialise reconciles per key; see the module docstring for the guarantees."""

    def __init__(
        self,
        reconcile: Callable[[K], Awaitable[Outcome]],
        *,
        max_concurrent: int = 16,
        backoff: Backoff | None = None,
        name: str = "queue",
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._reconcile = reconcile
        self._slots = asyncio.Semaphore(max_concurrent)
        self._backoff = backoff or Backoff()
        self._name = name
        self._workers: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._wake: dict[K, asyncio.Event] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.reconciles = 0  # total reconcile calls; for tests and metrics

    # -- public ---------------------------------------------------------------------------------

    def enqueue(self, key: K) -> None:
        """Ask for a reconcile of `key`: start a worker, or mark the running one dirty and wake it."""
        if self._closed:
            return
        worker = self._workers.get(key)
        if worker is not None and not worker.done():
            self._dirty.add(key)
            self._wake[key].set()
            return
        self._dirty.add(key)
        self._wake[key] = asyncio.Event()
        self._idle.clear()
        self._workers[key] = asyncio.create_task(self._worker(key), name=f"{self._name}:{key}")

    def busy_keys(self) -> list[K]:
        """Keys that currently have a worker (running, waiting for a slot, or waiting to retry)."""
        return list(self._workers)

    async def wait_idle(self) -> None:
        """Return once no key has a worker (useful in tests; a key that keeps retrying never idles)."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop accepting keys, cancel every worker and wait for them to finish."""
        self._closed = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()
        self._wake.clear()
        self._idle.set()

    # -- internals ------------------------------------------------------------------------------

    async def _worker(self, key: K) -> None:
        failures = 0
        wake = self._wake[key]
        try:
            while True:
                self._dirty.discard(key)
                wake.clear()
                async with self._slots:
                    outcome, crashed = await self._run_once(key, failures)
                if crashed:
                    failures += 1
                    await asyncio.sleep(self._backoff.delay(failures))
                    continue
                failures = 0
                if outcome.kind is OutcomeKind.RETRY:
                    if key not in self._dirty:
                        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                        # that arrives as the wait ends, which would hang aclose().
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(outcome.delay):
                                await wake.wait()
                    continue
                if outcome.kind is OutcomeKind.FAILED:
                    log.warning("%s: %s gave up: %s", self._name, key, outcome.reason)
                if key in self._dirty:
                    continue
                return
        finally:
            # Runs with no await between the decision to exit and the removal, so an enqueue that
            # arrives after this point starts a fresh worker instead of being lost.
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
                self._wake.pop(key, None)
            if not self._workers:
                self._idle.set()

    async def _run_once(self, key: K, failures: int) -> tuple[Outcome, bool]:
        """One reconcile; returns (outcome, crashed) and never raises (except cancellation)."""
        self.reconciles += 1
        try:
            outcome = await self._reconcile(key)
        except TemporaryError as exc:
            log.info("%s: %s not ready: %s (retry in %.2f s)", self._name, key, exc.message, exc.delay)
            return Outcome.retry(exc.delay, exc.message), False
        except PermanentError as exc:
            return Outcome.failed(exc.reason), False
        except Exception:
            delay = self._backoff.delay(failures + 1)
            log.exception("%s: reconcile of %s failed; retrying in %.2f s", self._name, key, delay)
            return Outcome.retry(delay), True
        if not isinstance(outcome, Outcome):
            log.error(
                "%s: reconcile of %s returned %r instead of an Outcome; treating it as done",
                self._name,
                key,
                outcome,
            )
            return Outcome.done(), False
        return outcome, False
