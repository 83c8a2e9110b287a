"""Submit-time checks of task configs for engines whose config Accord knows (built-in PSI, SPU PSI).

A job whose PSI task names a party that is not in the task, or has no key columns, should be refused when
it is submitted, not minutes later when an engine starts at every party.  Each known engine's config
model is pure pydantic (it lives with the engine so the engine checks the same rules again at prepare and
at start); this module maps AppImage names to those checks and turns their errors into InvalidArgument
with the job's code, naming the task and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.job import Job, JobTask
from accord.resources.meta import AnyResource

TaskConfigCheck = Callable[[JobTask], None]


def _check_builtin_psi(task: JobTask) -> None:
    from accord.engines.psi.config import parse_config

    _check_psi_parties(task, parse_config)


def _check_spu_psi(task: JobTask) -> None:
    from accord.engines.spu_psi.config import parse_config

    _check_psi_parties(task, parse_config)


def _check_psi_parties(task: JobTask, parse: Callable[[str], Any]) -> None:
    from accord.engines.psi.errors import ConfigError

    try:
        config = parse(task.input_config or "{}")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    task_parties = sorted({p.domain for p in task.parties})
    for name in config.parties:
        if name not in task_parties:
            raise ValueError(
                f"inputs: {name!r} is not a party of this task (parties: {', '.join(task_parties)})"
            )
    for name in task_parties:
        if name not in config.inputs:
            raise ValueError(f"inputs: no input for party {name!r}")


# AppImage name -> check; engines that ship their own config model register here.
CHECKS: dict[str, TaskConfigCheck] = {"psi": _check_builtin_psi, "spu-psi": _check_spu_psi}


def validate_job_task_configs(obj: AnyResource) -> None:
    """ResourceService validator for Jobs: every task whose engine is known gets its config checked."""
    if not isinstance(obj, Job):
        return
    for task in obj.spec.tasks:
        check = CHECKS.get(task.app_image)
        if check is None:
            continue
        try:
            check(task)
        except ValueError as exc:
            raise InvalidArgument(
                f"task {task.alias!r} ({task.app_image}): invalid task_input_config: {exc}",
                code=ErrorCode.JOB_INVALID,
            ) from exc
