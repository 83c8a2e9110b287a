"""Pure DAG rules: validation, ready-task selection and the job phase verdict (Kuscia's scheduler rules)."""

from __future__ import annotations

from typing import Any

import pytest

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.job import JobSpec
from accord.resources.phases import JobPhase, ScheduleMode, TaskPhase
from accord.scheduling.dag import blocked_tasks, find_cycle, job_phase, ready_tasks, task_id_of, validate_job

P = TaskPhase


def spec(*tasks: dict[str, Any], mode: ScheduleMode = ScheduleMode.STRICT, parallelism: int = 8) -> JobSpec:
    """A job of tasks given as dicts: alias, deps, tolerable, priority."""
    return JobSpec(
        initiator="alice",
        schedule_mode=mode,
        max_parallelism=parallelism,
        tasks=[
            {
                "alias": t["alias"],
                "app_image": "hello",
                "parties": [{"domain": "alice"}],
                "dependencies": t.get("deps", []),
                "tolerable": t.get("tolerable", False),
                "priority": t.get("priority", 0),
            }
            for t in tasks
        ],
    )


def aliases(tasks: list[Any]) -> list[str]:
    return [t.alias for t in tasks]


# -- validation ------------------------------------------------------------------------------------


def test_validate_accepts_a_dag() -> None:
    validate_job(spec({"alias": "a"}, {"alias": "b", "deps": ["a"]}, {"alias": "c", "deps": ["a", "b"]}))


def test_validate_rejects_unknown_dependency_naming_it() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_job(spec({"alias": "a", "deps": ["ghost"]}))
    assert err.value.code == ErrorCode.JOB_UNKNOWN_DEPENDENCY
    assert "'ghost'" in err.value.message and "'a'" in err.value.message


def test_validate_rejects_cycles_showing_the_cycle() -> None:
    s = spec({"alias": "a", "deps": ["c"]}, {"alias": "b", "deps": ["a"]}, {"alias": "c", "deps": ["b"]})
    assert find_cycle(s) is not None
    with pytest.raises(InvalidArgument) as err:
        validate_job(s)
    assert err.value.code == ErrorCode.JOB_DAG_CYCLE
    assert "->" in err.value.message


def test_validate_rejects_self_dependency() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_job(spec({"alias": "a", "deps": ["a"]}))
    assert "depends on itself" in err.value.message


def test_validate_checks_parties_when_domains_are_known() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_job(spec({"alias": "a"}), known_domains=["bob"])
    assert err.value.code == ErrorCode.JOB_UNKNOWN_PARTY
    assert "'alice'" in err.value.message


def test_task_id_defaults_to_job_and_alias() -> None:
    s = spec({"alias": "a"})
    assert task_id_of("job1", s.tasks[0]) == "job1-a"
    assert len(task_id_of("j" * 60, s.tasks[0])) <= 63


# -- ready tasks ---------------------------------------------------------------------------------------


def test_roots_are_ready_first_in_declaration_order() -> None:
    s = spec({"alias": "a"}, {"alias": "b"}, {"alias": "c", "deps": ["a", "b"]})
    assert aliases(ready_tasks(s, {})) == ["a", "b"]


def test_a_task_is_ready_only_when_all_dependencies_succeeded() -> None:
    s = spec({"alias": "a"}, {"alias": "b"}, {"alias": "c", "deps": ["a", "b"]})
    assert aliases(ready_tasks(s, {"a": P.SUCCEEDED, "b": P.RUNNING})) == []
    assert aliases(ready_tasks(s, {"a": P.SUCCEEDED, "b": P.SUCCEEDED})) == ["c"]


def test_created_tasks_are_never_ready_again() -> None:
    s = spec({"alias": "a"}, {"alias": "b"})
    assert aliases(ready_tasks(s, {}, created={"a"})) == ["b"]
    assert aliases(ready_tasks(s, {"a": P.FAILED, "b": P.SUCCEEDED})) == []


def test_priority_orders_ready_tasks_then_declaration_order() -> None:
    s = spec(
        {"alias": "low", "priority": 1},
        {"alias": "high", "priority": 10},
        {"alias": "mid1", "priority": 5},
        {"alias": "mid2", "priority": 5},
    )
    assert aliases(ready_tasks(s, {})) == ["high", "mid1", "mid2", "low"]


def test_max_parallelism_counts_pending_preparing_and_running() -> None:
    s = spec(*({"alias": f"t{i}"} for i in range(6)), parallelism=3)
    assert aliases(ready_tasks(s, {})) == ["t0", "t1", "t2"]
    assert aliases(ready_tasks(s, {"t0": P.PENDING, "t1": P.PREPARING})) == ["t2"]
    assert aliases(ready_tasks(s, {"t0": P.PENDING, "t1": P.PREPARING, "t2": P.RUNNING})) == []
    # Finished tasks free their slot; a created-but-unobserved task holds one.
    assert aliases(ready_tasks(s, {"t0": P.SUCCEEDED, "t1": P.SUCCEEDED}, created={"t2"})) == ["t3", "t4"]


def test_max_parallelism_keeps_the_highest_priority() -> None:
    s = spec({"alias": "a"}, {"alias": "b", "priority": 3}, {"alias": "c", "priority": 2}, parallelism=2)
    assert aliases(ready_tasks(s, {})) == ["b", "c"]


def test_descendants_of_a_failed_task_are_never_ready() -> None:
    s = spec(
        {"alias": "a", "tolerable": True},
        {"alias": "b", "deps": ["a"]},
        {"alias": "c", "deps": ["b"]},
        {"alias": "d"},
        mode=ScheduleMode.BEST_EFFORT,
    )
    assert aliases(ready_tasks(s, {"a": P.FAILED})) == ["d"]
    assert blocked_tasks(s, {"a": P.FAILED}) == {"b": "a", "c": "a"}


def test_strict_mode_schedules_nothing_after_a_critical_failure() -> None:
    s = spec({"alias": "a"}, {"alias": "b"}, {"alias": "c"}, parallelism=1)
    assert aliases(ready_tasks(s, {"a": P.FAILED})) == []
    best = spec({"alias": "a"}, {"alias": "b"}, {"alias": "c"}, parallelism=1, mode=ScheduleMode.BEST_EFFORT)
    assert aliases(ready_tasks(best, {"a": P.FAILED})) == ["b"]


def test_strict_mode_keeps_scheduling_after_a_tolerable_failure() -> None:
    s = spec({"alias": "a", "tolerable": True}, {"alias": "b"})
    assert aliases(ready_tasks(s, {"a": P.FAILED})) == ["b"]


# -- job phase ---------------------------------------------------------------------------------------


def test_job_runs_while_tasks_are_unfinished_or_ready() -> None:
    s = spec({"alias": "a"}, {"alias": "b", "deps": ["a"]})
    assert job_phase(s, {}) == (None, "")
    assert job_phase(s, {"a": P.RUNNING}) == (None, "")
    assert job_phase(s, {"a": P.SUCCEEDED}) == (None, "")  # b is ready
    assert job_phase(s, {"a": P.SUCCEEDED}, created={"b"}) == (None, "")  # b created, not observed


def test_job_succeeds_when_every_task_succeeded() -> None:
    s = spec({"alias": "a"}, {"alias": "b", "deps": ["a"]})
    verdict = job_phase(s, {"a": P.SUCCEEDED, "b": P.SUCCEEDED})
    assert verdict.phase == JobPhase.SUCCEEDED
    assert verdict.reason == "all 2 tasks succeeded"


@pytest.mark.parametrize("mode", list(ScheduleMode))
def test_tolerable_failure_never_fails_the_job(mode: ScheduleMode) -> None:
    s = spec({"alias": "a"}, {"alias": "t", "tolerable": True}, mode=mode)
    assert job_phase(s, {"a": P.SUCCEEDED, "t": P.RUNNING}).phase is None
    verdict = job_phase(s, {"a": P.SUCCEEDED, "t": P.FAILED})
    assert verdict.phase == JobPhase.SUCCEEDED
    assert "tolerable task 't' failed" in verdict.reason
    assert "1 of 2 tasks succeeded" in verdict.reason


def test_strict_fails_at_the_first_critical_failure_even_while_others_run() -> None:
    s = spec({"alias": "a"}, {"alias": "b"}, {"alias": "c", "deps": ["a"]})
    verdict = job_phase(s, {"a": P.FAILED, "b": P.RUNNING})
    assert verdict.phase == JobPhase.FAILED
    assert verdict.reason == "critical task 'a' failed"


def test_best_effort_fails_only_once_nothing_is_ready_or_running() -> None:
    s = spec(
        {"alias": "a"},
        {"alias": "b"},
        {"alias": "c", "deps": ["a"]},
        {"alias": "d", "deps": ["b"]},
        mode=ScheduleMode.BEST_EFFORT,
    )
    assert job_phase(s, {"a": P.FAILED, "b": P.RUNNING}).phase is None
    assert job_phase(s, {"a": P.FAILED, "b": P.SUCCEEDED}).phase is None  # d is ready
    assert job_phase(s, {"a": P.FAILED, "b": P.SUCCEEDED, "d": P.PREPARING}).phase is None
    verdict = job_phase(s, {"a": P.FAILED, "b": P.SUCCEEDED, "d": P.SUCCEEDED})
    assert verdict.phase == JobPhase.FAILED
    assert verdict.reason == "critical task 'a' failed"


def test_best_effort_names_every_failed_critical_task() -> None:
    s = spec({"alias": "a"}, {"alias": "b"}, mode=ScheduleMode.BEST_EFFORT)
    verdict = job_phase(s, {"a": P.FAILED, "b": P.FAILED})
    assert verdict == (JobPhase.FAILED, "critical tasks 'a', 'b' failed")


@pytest.mark.parametrize("mode", list(ScheduleMode))
def test_critical_task_blocked_by_a_tolerable_failure_fails_the_job(mode: ScheduleMode) -> None:
    # Kuscia would leave this job Running forever; here it fails, naming the task and the cause.
    s = spec({"alias": "prep", "tolerable": True}, {"alias": "train", "deps": ["prep"]}, mode=mode)
    verdict = job_phase(s, {"prep": P.FAILED})
    assert verdict.phase == JobPhase.FAILED
    assert verdict.reason == "critical task 'train' cannot run because its dependency 'prep' failed"


def test_tolerable_tasks_blocked_by_a_tolerable_failure_are_skipped() -> None:
    s = spec(
        {"alias": "a"},
        {"alias": "t1", "tolerable": True},
        {"alias": "t2", "tolerable": True, "deps": ["t1"]},
    )
    verdict = job_phase(s, {"a": P.SUCCEEDED, "t1": P.FAILED})
    assert verdict.phase == JobPhase.SUCCEEDED
    assert "'t2' skipped" in verdict.reason


def test_blocked_follows_chains_to_the_root_cause() -> None:
    s = spec(
        {"alias": "a"},
        {"alias": "b", "deps": ["a"]},
        {"alias": "c", "deps": ["b"]},
        {"alias": "d", "deps": ["c", "e"]},
        {"alias": "e"},
    )
    assert blocked_tasks(s, {"a": P.FAILED, "e": P.SUCCEEDED}) == {"b": "a", "c": "a", "d": "a"}
    assert blocked_tasks(s, {"a": P.SUCCEEDED}) == {}
