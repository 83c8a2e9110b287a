"""The per-key work queue: serialised per key, parallel across keys, coalescing, outcomes and backoff."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from accord.controllers.queue import Backoff, Outcome, OutcomeKind, PermanentError, TemporaryError, WorkQueue

LIMIT = 5.0  # every wait in these tests is bounded by this many seconds


async def settle(steps: int = 20) -> None:
    """Let the event loop run ready callbacks (no wall-clock waiting)."""
    for _ in range(steps):
        await asyncio.sleep(0)


def test_backoff_grows_exponentially_and_caps() -> None:
    backoff = Backoff(initial=0.2, factor=2.0, maximum=30.0)
    assert [backoff.delay(n) for n in range(5)] == [0.0, 0.2, 0.4, 0.8, 1.6]
    assert backoff.delay(50) == 30.0


def test_outcome_constructors() -> None:
    assert Outcome.done().kind is OutcomeKind.DONE
    assert Outcome.retry(-1).delay == 0.0
    assert Outcome.failed("nope") == Outcome(OutcomeKind.FAILED, reason="nope")


async def test_one_key_is_never_reconciled_concurrently_and_bursts_coalesce() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    in_flight = 0
    max_in_flight = 0
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal in_flight, max_in_flight, calls
        calls += 1
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        started.set()
        await release.wait()
        in_flight -= 1
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("job-a")
    async with asyncio.timeout(LIMIT):
        await started.wait()
        for _ in range(10):
            queue.enqueue("job-a")
        await settle()
        assert calls == 1
        release.set()
        await queue.wait_idle()
    assert calls == 2  # ten enqueues during one reconcile -> exactly one more reconcile
    assert max_in_flight == 1
    assert queue.busy_keys() == []


async def test_keys_run_in_parallel_up_to_the_limit() -> None:
    release = asyncio.Event()
    in_flight = 0
    max_in_flight = 0
    seen: list[str] = []

    async def reconcile(key: str) -> Outcome:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        seen.append(key)
        await release.wait()
        in_flight -= 1
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile, max_concurrent=2)
    for key in ["a", "b", "c", "d", "e"]:
        queue.enqueue(key)
    await settle()
    assert in_flight == 2
    assert sorted(queue.busy_keys()) == ["a", "b", "c", "d", "e"]
    release.set()
    async with asyncio.timeout(LIMIT):
        await queue.wait_idle()
    assert sorted(seen) == ["a", "b", "c", "d", "e"]
    assert max_in_flight == 2


async def test_idle_workers_exit_and_a_later_enqueue_starts_a_new_one() -> None:
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> Outcome:
        calls[key] += 1
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("x")
    async with asyncio.timeout(LIMIT):
        await queue.wait_idle()
        assert queue.busy_keys() == []
        queue.enqueue("x")
        await queue.wait_idle()
    assert calls["x"] == 2


async def test_requested_retry_runs_again_and_an_enqueue_cuts_the_wait_short() -> None:
    calls = 0
    second = asyncio.Event()

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            return Outcome.retry(3600.0, "waiting for the engine")
        second.set()
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("t")
    await settle()
    assert calls == 1 and queue.busy_keys() == ["t"]
    queue.enqueue("t")  # the object changed: look again now, not in an hour
    async with asyncio.timeout(LIMIT):
        await second.wait()
        await queue.wait_idle()
    assert calls == 2


async def test_short_retry_runs_again_by_itself() -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        return Outcome.retry(0.01) if calls < 3 else Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("t")
    async with asyncio.timeout(LIMIT):
        await queue.wait_idle()
    assert calls == 3


async def test_temporary_error_is_a_retry(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TemporaryError("route not ready", delay=0.01)
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    with caplog.at_level(logging.INFO, logger="accord.controllers.queue"):
        queue.enqueue("t")
        async with asyncio.timeout(LIMIT):
            await queue.wait_idle()
    assert calls == 2
    assert "route not ready" in caplog.text


async def test_permanent_error_stops_retrying(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        raise PermanentError("AppImage 'x' is malformed")

    queue: WorkQueue[str] = WorkQueue(reconcile)
    with caplog.at_level(logging.WARNING, logger="accord.controllers.queue"):
        queue.enqueue("t")
        async with asyncio.timeout(LIMIT):
            await queue.wait_idle()
    assert calls == 1
    assert "gave up: AppImage 'x' is malformed" in caplog.text


async def test_failed_outcome_stops_until_the_next_enqueue() -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        return Outcome.failed("bad spec")

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("t")
    async with asyncio.timeout(LIMIT):
        await queue.wait_idle()
        queue.enqueue("t")
        await queue.wait_idle()
    assert calls == 2


async def test_unexpected_exception_is_logged_with_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"boom {calls}")
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile, backoff=Backoff(initial=0.001, maximum=0.01))
    with caplog.at_level(logging.ERROR, logger="accord.controllers.queue"):
        queue.enqueue("t")
        async with asyncio.timeout(LIMIT):
            await queue.wait_idle()
    assert calls == 3
    crashes = [r for r in caplog.records if "reconcile of t failed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info is not None for r in crashes)
    assert "boom 1" in caplog.text and "boom 2" in caplog.text


async def test_error_backoff_is_not_cut_short_by_enqueue() -> None:
    calls = 0

    async def reconcile(key: str) -> Outcome:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    queue: WorkQueue[str] = WorkQueue(reconcile, backoff=Backoff(initial=3600.0))
    queue.enqueue("t")
    await settle()
    for _ in range(5):
        queue.enqueue("t")
    await settle()
    assert calls == 1
    async with asyncio.timeout(LIMIT):
        await queue.aclose()


async def test_non_outcome_return_is_treated_as_done(caplog: pytest.LogCaptureFixture) -> None:
    async def reconcile(key: str) -> Outcome:
        return None  # type: ignore[return-value]

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("t")
    async with asyncio.timeout(LIMIT):
        await queue.wait_idle()
    assert "instead of an Outcome" in caplog.text


async def test_aclose_cancels_running_workers_and_ignores_later_keys() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def reconcile(key: str) -> Outcome:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Outcome.done()

    queue: WorkQueue[str] = WorkQueue(reconcile)
    queue.enqueue("t")
    async with asyncio.timeout(LIMIT):
        await started.wait()
        await queue.aclose()
    assert cancelled.is_set()
    assert queue.busy_keys() == []
    queue.enqueue("t")
    assert queue.busy_keys() == []


def test_max_concurrent_must_be_positive() -> None:
    async def reconcile(key: str) -> Outcome:
        return Outcome.done()

    with pytest.raises(ValueError, match="at least 1"):
        WorkQueue(reconcile, max_concurrent=0)
