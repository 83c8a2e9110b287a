"""Phase enums for jobs, tasks, parties, routes and data (the transition tables live in scheduling/)."""

from __future__ import annotations

from enum import StrEnum


class JobPhase(StrEnum):
    INITIALIZED = "Initialized"
    AWAITING_APPROVAL = "AwaitingApproval"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    APPROVAL_REJECT = "ApprovalReject"
    SUSPENDED = "Suspended"
    CANCELLED = "Cancelled"


JOB_TERMINAL = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.APPROVAL_REJECT, JobPhase.CANCELLED})
JOB_RESTARTABLE = frozenset({JobPhase.FAILED, JobPhase.SUSPENDED})


class TaskPhase(StrEnum):
    PENDING = "Pending"
    PREPARING = "Preparing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TASK_TERMINAL = frozenset({TaskPhase.SUCCEEDED, TaskPhase.FAILED})


class ScheduleMode(StrEnum):
    STRICT = "Strict"
    BEST_EFFORT = "BestEffort"


class JobStage(StrEnum):
    """Stage commands (Kuscia's `job-stage` label), applied by every party, newest version wins."""

    CREATE = "Create"
    START = "Start"
    STOP = "Stop"
    SUSPEND = "Suspend"
    RESTART = "Restart"
    CANCEL = "Cancel"


class ApprovalState(StrEnum):
    PENDING = "Pending"
    ACCEPTED = "JobAccepted"
    REJECTED = "JobRejected"


class RoutePhase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    UNREACHABLE = "Unreachable"
    UNAUTHORIZED = "Unauthorized"


class DataPhase(StrEnum):
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"
    UNKNOWN = "Unknown"
