"""ControllerManager: feeds every controller's work queue from the store (list, then watch, then resync).

**What a controller is** (the whole contract; the route controller and later ones follow it)::

    class MyController:
        kind = "DomainRoute"                      # the kind whose objects it reconciles

        async def reconcile(self, name: str) -> Outcome:
            ...                                   # read the object (it may be gone), act, write status

    # optional extras, looked up with getattr:
        related: Mapping[str, Callable[[WatchEvent], Iterable[str]]]
            # other kinds to watch; each changed object maps to names of *my* kind to reconcile
            # (the job controller maps a changed Task to its Job through the `accord/job` label)
        async def extra_names(self) -> Iterable[str]
            # names to reconcile at every (re)list besides the stored objects (the task controller
            # returns engines still running for tasks that were deleted while the node was down)
        def attach(self, enqueue: Callable[[str], None]) -> None
            # called once before the watches start: `enqueue(name)` asks for a reconcile when something
            # outside the store changed (the task controller: an engine process ended)

`reconcile` is called with the object's *name*, never a snapshot: it reads the current object itself, so
coalesced events lose nothing.  It runs serialised per name (see `queue.py`) and returns an `Outcome`,
or raises `TemporaryError` / `PermanentError`; anything else is logged and retried with backoff.

**Why list-then-watch.**  At start (and after every `Gone`), the manager reads `store.revision()` first,
then lists the kind and enqueues every object, then watches from that revision.  Reading the revision
before the list means a change racing with the list is seen twice rather than never.  This is what makes a
restarted node pick up where it left off: every object is reconciled once at start, and each reconciler
compares the stored status with the world (is the engine still running?).  A periodic resync re-enqueues
everything, as a safety net for a missed event or an external change (an engine that exited while no
event was due).

**Failures.**  A watch that raises `Gone` (history compacted) is replaced by a fresh list + watch.  Any
other store error is logged and retried after a short backoff; the manager itself never dies of one.
A watch that simply ends means the store was closed: that watcher stops.

**Stopping.**  `run()` runs until cancelled (it lives in the node's TaskGroup); on cancellation it cancels
its watchers and every queue worker, and awaits them, so nothing keeps running after it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from accord.controllers.queue import Backoff, Outcome, WorkQueue
from accord.errors import Gone
from accord.settings import NodeSettings
from accord.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

RelatedMapper = Callable[[WatchEvent], Iterable[str]]


@runtime_checkable
class Controller(Protocol):
    """See the module docstring."""

    kind: str

    async def reconcile(self, name: str) -> Outcome: ...


class ControllerManager:
    """Runs a set of controllers against one store until cancelled."""

    def __init__(
        self,
        store: Store,
        controllers: Sequence[Controller],
        settings: NodeSettings,
        *,
        resync_seconds: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        kinds = [c.kind for c in controllers]
        duplicates = sorted({k for k in kinds if kinds.count(k) > 1})
        if duplicates:
            raise ValueError(f"more than one controller for kind(s) {', '.join(duplicates)}")
        self._store = store
        self._controllers = list(controllers)
        self._settings = settings
        self._resync_seconds = resync_seconds
        self._store_retry = Backoff(initial=0.2, maximum=5.0)
        self.queues: dict[str, WorkQueue[str]] = {
            c.kind: WorkQueue(
                c.reconcile,
                max_concurrent=settings.reconcile_workers,
                backoff=backoff,
                name=f"controller/{c.kind}",
            )
            for c in self._controllers
        }

    async def run(self) -> None:
        """Watch and reconcile until cancelled; then stop every watcher and worker."""
        for controller in self._controllers:
            attach: Any = getattr(controller, "attach", None)
            if attach is not None:
                attach(self.queues[controller.kind].enqueue)
        try:
            async with asyncio.TaskGroup() as group:
                for controller in self._controllers:
                    queue = self.queues[controller.kind]
                    group.create_task(self._watch_primary(controller, queue), name=f"watch/{controller.kind}")
                    related: Mapping[str, RelatedMapper] = getattr(controller, "related", {}) or {}
                    for kind, mapper in related.items():
                        group.create_task(
                            self._watch_related(controller, queue, kind, mapper),
                            name=f"watch/{controller.kind}<-{kind}",
                        )
                    if self._resync_seconds > 0:
                        group.create_task(self._resync(controller, queue), name=f"resync/{controller.kind}")
        finally:
            for queue in self.queues.values():
                await queue.aclose()

    # -- feeding the queues ---------------------------------------------------------------------

    async def _enqueue_all(self, controller: Controller, queue: WorkQueue[str]) -> None:
        for obj in await self._store.list(controller.kind):
            queue.enqueue(obj.meta.name)
        extra: Any = getattr(controller, "extra_names", None)
        if extra is not None:
            for name in await extra():
                queue.enqueue(name)

    async def _watch_primary(self, controller: Controller, queue: WorkQueue[str]) -> None:
        kind = controller.kind
        failures = 0
        while True:
            try:
                since = await self._store.revision()
                await self._enqueue_all(controller, queue)
                async for event in self._store.watch(kind, since=since):
                    failures = 0
                    queue.enqueue(event.name)
                log.info("watch of %s ended (store closed); controller stops watching", kind)
                return
            except Gone as exc:
                log.info("watch of %s expired (%s); listing again", kind, exc.message)
            except Exception:
                failures += 1
                delay = self._store_retry.delay(failures)
                log.exception("watching %s failed; retrying in %.1f s", kind, delay)
                await asyncio.sleep(delay)

    async def _watch_related(
        self,
        controller: Controller,
        queue: WorkQueue[str],
        kind: str,
        mapper: RelatedMapper,
    ) -> None:
        failures = 0
        missed = False
        while True:
            try:
                since = await self._store.revision()
                if missed:
                    await self._enqueue_all(controller, queue)
                    missed = False
                async for event in self._store.watch(kind, since=since):
                    failures = 0
                    try:
                        names = list(mapper(event))
                    except Exception:
                        log.exception("mapping a %s event to %s failed; event ignored", kind, controller.kind)
                        continue
                    for name in names:
                        queue.enqueue(name)
                return
            except Gone as exc:
                # Changes of `kind` were missed: reconcile every object of ours instead.
                log.info("watch of %s for %s expired (%s); resyncing", kind, controller.kind, exc.message)
                missed = True
            except Exception:
                failures += 1
                missed = True
                delay = self._store_retry.delay(failures)
                log.exception("watching %s for %s failed; retrying in %.1f s", kind, controller.kind, delay)
                await asyncio.sleep(delay)

    async def _resync(self, controller: Controller, queue: WorkQueue[str]) -> None:
        while True:
            await asyncio.sleep(self._resync_seconds)
            try:
                await self._enqueue_all(controller, queue)
            except Exception:
                log.exception("periodic resync of %s failed; trying again next period", controller.kind)
