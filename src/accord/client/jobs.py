"""Job calls of the Python SDK: submit, approve/reject, and the stage commands, issued at any party.

Functions over an `AccordClient` (as `client/data.py`), so the job group stays in its own module.  They
return the API's JSON documents as they are: the Job for submit/approve/reject, and
`{job, phase, stage{stage, version, trigger}, message, initiator}` for a stage command, which is what
the job's initiator recorded (a command issued at a participant is forwarded there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accord.client.http import AccordClient

COMMANDS = ("stop", "suspend", "restart", "cancel")


def submit_job(client: AccordClient, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Submit a Job (native or KusciaJob document); checked for cycles, parties and routes first."""
    return client._json("POST", "/v1/jobs", json=dict(doc))


def approve_job(client: AccordClient, name: str, reason: str = "") -> dict[str, Any]:
    return client._json("POST", f"/v1/jobs/{name}/approve", json={"reason": reason})


def reject_job(client: AccordClient, name: str, reason: str = "") -> dict[str, Any]:
    return client._json("POST", f"/v1/jobs/{name}/reject", json={"reason": reason})


def job_command(client: AccordClient, name: str, command: str, reason: str = "") -> dict[str, Any]:
    """`command` is one of stop, suspend, restart, cancel."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, not {command!r}")
    return client._json("POST", f"/v1/jobs/{name}/{command}", json={"reason": reason})


def delete_job(client: AccordClient, name: str) -> dict[str, Any]:
    """Delete a job at every party (the initiator tells the others)."""
    return client._json("DELETE", f"/v1/jobs/{name}")
