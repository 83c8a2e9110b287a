"""Job DAG checks and ordering (pure functions over JobSpec), following Kuscia's scheduler rules.

`validate_job` is what every submit path calls before anything is stored: dependencies must name tasks
of the same job, the graph must be acyclic, and (when the caller knows them) every party must be a
domain this node can reach.  Each failure has its own code so clients can tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.job import JobSpec, JobTask


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
