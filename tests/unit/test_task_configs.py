"""Submit-time checks of known engines' task configs: a bad PSI config is refused before anything runs."""

from __future__ import annotations

import json

import pytest

from accord.errors import ErrorCode, InvalidArgument
from accord.resources import Job
from accord.services.task_configs import validate_job_task_configs


def _job(config: object, parties: tuple[str, ...] = ("alice", "bob"), image: str = "psi") -> Job:
    return Job.model_validate(
        {
            "meta": {"name": "j"},
            "spec": {
                "initiator": "alice",
                "tasks": [
                    {
                        "alias": "psi",
                        "app_image": image,
                        "input_config": json.dumps(config),
                        "parties": [{"domain": d} for d in parties],
                    }
                ],
            },
        }
    )


GOOD = {"inputs": {"alice": {"data": "a", "keys": ["id"]}, "bob": {"data": "b", "keys": ["id"]}}}


def test_good_config_passes() -> None:
    validate_job_task_configs(_job(GOOD))


@pytest.mark.parametrize(
    ("config", "parties", "message"),
    [
        (
            {"inputs": {"alice": {"data": "a", "keys": []}, "bob": {"data": "b", "keys": ["id"]}}},
            None,
            "keys",
        ),
        ({**GOOD, "receivers": ["carol"]}, None, "receivers: 'carol' is not a party"),
        (GOOD, ("alice", "carol"), "'bob' is not a party of this task"),
        ({**GOOD, "join": "outer"}, None, "join"),
    ],
)
def test_bad_config_names_task_and_field(
    config: object, parties: tuple[str, ...] | None, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_job_task_configs(_job(config, parties or ("alice", "bob")))
    assert info.value.code == ErrorCode.JOB_INVALID
    assert "task 'psi' (psi)" in info.value.message
    assert message in info.value.message


def test_unknown_engines_are_not_checked() -> None:
    validate_job_task_configs(_job({"anything": 1}, image="hello"))
