"""Job DAG checks and ordering (pure functions over JobSpec), following Kuscia's scheduler rules.

`validate_job` is what every submit path calls before anything is stored: dependencies must name tasks
of the same job, the graph must be acyclic, and (when the caller knows them) every party must be a
domain this node can reach.  Each failure has its own code so clients can tell them apart.

`ready_tasks` and `job_phase` are the scheduler proper (Kuscia's `readyTasksOf`, `willStartTasksOf` and
`jobStatusPhaseFrom`), as pure functions of the spec and the observed task phases, so every rule is a
unit test.  Two deliberate differences from Kuscia:

- A task whose dependency failed (or is itself blocked) can never run; we call it *blocked*.  Kuscia
  leaves such a job Running forever when the failed dependency was tolerable (nothing ready, nothing
  running, no critical failure).  Here, once nothing is ready or running, a blocked *critical* task
  fails the job (naming the task and the dependency that blocked it) and a blocked tolerable one is
  simply skipped.
- In Strict mode `ready_tasks` returns nothing once a critical task failed, so the job controller cannot
  start new work between seeing the failure and writing the job's Failed phase.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.job import JobSpec, JobTask
from accord.resources.phases import TASK_TERMINAL, JobPhase, ScheduleMode, TaskPhase

# Phases that occupy a parallelism slot (a created task that has not finished).
ACTIVE_TASK_PHASES = frozenset({TaskPhase.PENDING, TaskPhase.PREPARING, TaskPhase.RUNNING})


def task_id_of(job_name: str, task: JobTask) -> str:
    """The task's global id: its explicit `task_id`, else `<job>-<alias>` (truncated to 63)."""
    if task.task_id:
        return task.task_id
    return f"{job_name}-{task.alias}"[:63].rstrip("-")


def find_cycle(spec: JobSpec) -> list[str] | None:
    """A dependency cycle as a list of aliases (first == last), or None."""
    deps = {t.alias: list(t.dependencies) for t in spec.tasks}
    state: dict[str, int] = {}  # 0 unvisited, 1 on stack, 2 done
    stack: list[str] = []

    def visit(alias: str) -> list[str] | None:
        state[alias] = 1
        stack.append(alias)
        for dep in deps.get(alias, []):
            if dep not in deps:
                continue
            if state.get(dep, 0) == 1:
                return [*stack[stack.index(dep) :], dep]
            if state.get(dep, 0) == 0:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[alias] = 2
        return None

    for t in spec.tasks:
        if state.get(t.alias, 0) == 0:
            cycle = visit(t.alias)
            if cycle:
                return cycle
    return None


def validate_job(spec: JobSpec, known_domains: Iterable[str] | None = None) -> None:
    """Raise InvalidArgument (with a job code) if the DAG or its parties are unusable."""
    aliases = {t.alias for t in spec.tasks}
    for task in spec.tasks:
        for dep in task.dependencies:
            if dep == task.alias:
                raise InvalidArgument(f"task {task.alias!r} depends on itself", code=ErrorCode.JOB_DAG_CYCLE)
            if dep not in aliases:
                raise InvalidArgument(
                    f"task {task.alias!r} depends on {dep!r}, which is not a task of this job "
                    f"(tasks: {', '.join(sorted(aliases))})",
                    code=ErrorCode.JOB_UNKNOWN_DEPENDENCY,
                )
    cycle = find_cycle(spec)
    if cycle:
        raise InvalidArgument(
            f"the task dependencies form a cycle: {' -> '.join(cycle)}",
            code=ErrorCode.JOB_DAG_CYCLE,
        )
    if known_domains is not None:
        known = set(known_domains)
        for domain in spec.parties():
            if domain not in known:
                raise InvalidArgument(
                    f"party {domain!r} is not a known domain: add it with "
                    f"`accord domain add {domain} --cert FILE` and a route first",
                    code=ErrorCode.JOB_UNKNOWN_PARTY,
                )


def _observed(phases: Mapping[str, TaskPhase], created: Iterable[str]) -> dict[str, TaskPhase]:
    """Alias -> phase for every created task; a created task not yet observed counts as Pending."""
    out = {alias: TaskPhase.PENDING for alias in created}
    out.update(phases)
    return out


def blocked_tasks(spec: JobSpec, phases: Mapping[str, TaskPhase]) -> dict[str, str]:
    """Tasks that can never run, each with the failed task that blocks it (alias -> failed alias).

    A task is blocked when it was not created and one of its dependencies failed or is blocked itself.
    """
    by_alias = {t.alias: t for t in spec.tasks}
    blocked: dict[str, str] = {}

    def cause(alias: str, seen: frozenset[str]) -> str | None:
        if alias in blocked:
            return blocked[alias]
        if alias in phases or alias in seen:
            return None
        for dep in by_alias[alias].dependencies:
            if dep not in by_alias:
                continue
            if phases.get(dep) == TaskPhase.FAILED:
                return dep
            upstream = cause(dep, seen | {alias})
            if upstream is not None:
                return upstream
        return None

    for task in spec.tasks:
        found = cause(task.alias, frozenset())
        if found is not None:
            blocked[task.alias] = found
    return blocked


def _failed_critical(spec: JobSpec, phases: Mapping[str, TaskPhase]) -> list[str]:
    return [t.alias for t in spec.tasks if not t.tolerable and phases.get(t.alias) == TaskPhase.FAILED]


def ready_tasks(
    spec: JobSpec,
    phases: Mapping[str, TaskPhase],
    created: Iterable[str] = (),
) -> list[JobTask]:
    """The tasks to create now, in the order to create them.

    `phases` maps the alias of every created task to its observed phase; `created` may name tasks that
    exist but whose phase is not known yet (they count as Pending).  A task is ready when it was not
    created and all its dependencies Succeeded (so descendants of a failed task are never ready).  Ready
    tasks are ordered by priority (highest first), then declaration order, and cut so that the number of
    created, unfinished tasks stays below `max_parallelism`.  In Strict mode nothing is ready once a
    critical task failed.
    """
    observed = _observed(phases, created)
    if spec.schedule_mode == ScheduleMode.STRICT and _failed_critical(spec, observed):
        return []
    active = sum(1 for phase in observed.values() if phase in ACTIVE_TASK_PHASES)
    slots = spec.max_parallelism - active
    if slots <= 0:
        return []
    candidates = [
        (index, task)
        for index, task in enumerate(spec.tasks)
        if task.alias not in observed
        and all(observed.get(dep) == TaskPhase.SUCCEEDED for dep in task.dependencies)
    ]
    candidates.sort(key=lambda pair: (-pair[1].priority, pair[0]))
    return [task for _, task in candidates[:slots]]


class JobVerdict(NamedTuple):
    """What the DAG says about a job: a final phase (or None while work remains) and why."""

    phase: JobPhase | None
    reason: str


def _names(aliases: list[str]) -> str:
    return ", ".join(repr(a) for a in aliases)


def job_phase(
    spec: JobSpec,
    phases: Mapping[str, TaskPhase],
    created: Iterable[str] = (),
) -> JobVerdict:
    """Kuscia's phase rules (kuscia.md section 3) over the observed task phases.

    - Strict: the first failed critical (non-tolerable) task fails the job at once.
    - BestEffort: the job fails only once nothing is ready or running and some critical task failed.
    - Either mode: once nothing is ready or running, a critical task that can never run because a
      dependency failed fails the job; otherwise the job Succeeded (tolerable failures, and tolerable
      tasks skipped because of them, never fail a job).
    - While tasks are unfinished or ready, the verdict is `(None, "")`: the job keeps running.
    """
    observed = _observed(phases, created)
    failed_critical = _failed_critical(spec, observed)
    if spec.schedule_mode == ScheduleMode.STRICT and failed_critical:
        return JobVerdict(JobPhase.FAILED, f"critical task {failed_critical[0]!r} failed")
    unfinished = [alias for alias, phase in observed.items() if phase not in TASK_TERMINAL]
    if unfinished:
        return JobVerdict(None, "")
    ready = [
        t.alias
        for t in spec.tasks
        if t.alias not in observed and all(observed.get(d) == TaskPhase.SUCCEEDED for d in t.dependencies)
    ]
    if ready:
        return JobVerdict(None, "")
    if failed_critical:
        noun = "task" if len(failed_critical) == 1 else "tasks"
        return JobVerdict(JobPhase.FAILED, f"critical {noun} {_names(failed_critical)} failed")
    blocked = blocked_tasks(spec, observed)
    critical_blocked = [t.alias for t in spec.tasks if not t.tolerable and t.alias in blocked]
    if critical_blocked:
        first = critical_blocked[0]
        return JobVerdict(
            JobPhase.FAILED,
            f"critical task {first!r} cannot run because its dependency {blocked[first]!r} failed",
        )
    succeeded = [t.alias for t in spec.tasks if observed.get(t.alias) == TaskPhase.SUCCEEDED]
    failed = [t.alias for t in spec.tasks if observed.get(t.alias) == TaskPhase.FAILED]
    total = len(spec.tasks)
    if not failed and not blocked:
        return JobVerdict(JobPhase.SUCCEEDED, f"all {total} tasks succeeded")
    parts = [f"{len(succeeded)} of {total} tasks succeeded"]
    if failed:
        parts.append(f"tolerable {'task' if len(failed) == 1 else 'tasks'} {_names(failed)} failed")
    skipped = [t.alias for t in spec.tasks if t.alias in blocked]
    if skipped:
        parts.append(f"{_names(skipped)} skipped")
    return JobVerdict(JobPhase.SUCCEEDED, "; ".join(parts))
