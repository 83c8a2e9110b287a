"""The phase transition tables: every allowed pair passes, everything else is refused with a clear message."""

from __future__ import annotations

import itertools

import pytest

from accord.errors import Conflict, ErrorCode
from accord.resources.phases import JOB_TERMINAL, JobPhase, TaskPhase
from accord.scheduling.transitions import (
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    check_job_transition,
    check_task_transition,
    is_job_transition_allowed,
    is_task_transition_allowed,
)


def test_job_happy_path_is_allowed() -> None:
    path = [JobPhase.INITIALIZED, JobPhase.PENDING, JobPhase.RUNNING, JobPhase.SUCCEEDED]
    for a, b in itertools.pairwise(path):
        check_job_transition(a, b)
    check_job_transition(JobPhase.INITIALIZED, JobPhase.AWAITING_APPROVAL)
    check_job_transition(JobPhase.AWAITING_APPROVAL, JobPhase.PENDING)


def test_task_happy_path_is_allowed() -> None:
    path = [TaskPhase.PENDING, TaskPhase.PREPARING, TaskPhase.RUNNING, TaskPhase.SUCCEEDED]
    for a, b in itertools.pairwise(path):
        check_task_transition(a, b)


@pytest.mark.parametrize("phase", list(JobPhase))
def test_same_job_phase_is_not_a_transition(phase: JobPhase) -> None:
    check_job_transition(phase, phase)


@pytest.mark.parametrize("final", [JobPhase.SUCCEEDED, JobPhase.APPROVAL_REJECT, JobPhase.CANCELLED])
def test_final_job_phases_go_nowhere(final: JobPhase) -> None:
    for target in JobPhase:
        if target != final:
            assert not is_job_transition_allowed(final, target)
    with pytest.raises(Conflict) as err:
        check_job_transition(final, JobPhase.RUNNING)
    assert "nothing (the phase is final)" in err.value.message
    assert err.value.code == ErrorCode.JOB_STAGE_INVALID


def test_restart_and_suspend_rules() -> None:
    assert is_job_transition_allowed(JobPhase.FAILED, JobPhase.RUNNING)
    assert is_job_transition_allowed(JobPhase.SUSPENDED, JobPhase.RUNNING)
    assert is_job_transition_allowed(JobPhase.RUNNING, JobPhase.SUSPENDED)
    assert not is_job_transition_allowed(JobPhase.PENDING, JobPhase.SUSPENDED)
    assert not is_job_transition_allowed(JobPhase.SUCCEEDED, JobPhase.RUNNING)


def test_every_non_final_job_phase_can_fail_or_be_cancelled() -> None:
    for phase in JobPhase:
        if phase in JOB_TERMINAL and phase != JobPhase.FAILED:
            continue
        if phase != JobPhase.FAILED:
            assert is_job_transition_allowed(phase, JobPhase.FAILED), phase
        assert is_job_transition_allowed(phase, JobPhase.CANCELLED), phase


def test_refused_job_transition_names_both_phases_and_the_options() -> None:
    with pytest.raises(Conflict) as err:
        check_job_transition(JobPhase.PENDING, JobPhase.SUCCEEDED)
    message = err.value.message
    assert "from Pending to Succeeded" in message
    assert "Cancelled, Failed, Running" in message


def test_refused_task_transitions() -> None:
    with pytest.raises(Conflict) as err:
        check_task_transition(TaskPhase.PENDING, TaskPhase.RUNNING)
    assert "from Pending to Running" in err.value.message
    assert "Failed, Preparing" in err.value.message
    assert err.value.code == ErrorCode.TASK_INVALID
    for final in (TaskPhase.SUCCEEDED, TaskPhase.FAILED):
        for target in TaskPhase:
            assert is_task_transition_allowed(final, target) == (final == target)


def test_every_non_final_task_phase_can_fail() -> None:
    for phase in (TaskPhase.PENDING, TaskPhase.PREPARING, TaskPhase.RUNNING):
        check_task_transition(phase, TaskPhase.FAILED)


def test_tables_only_hold_real_changes() -> None:
    assert all(a != b for a, b in JOB_TRANSITIONS)
    assert all(a != b for a, b in TASK_TRANSITIONS)
