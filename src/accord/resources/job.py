"""Jobs (a DAG of multi-party tasks) and Tasks (one vertex at run time).

Field names follow KusciaJob/KusciaTask in snake_case; `resources/kuscia.py` converts the CRD YAML.
Structural checks that need only one field live here (unique aliases, party lists); graph checks
(cycles, unknown dependencies) live in `scheduling/dag.py`, where the graph logic is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from accord.names import check_dns_label
from accord.resources.meta import Model, Resource
from accord.resources.phases import (
    ApprovalState,
    JobPhase,
    JobStage,
    ScheduleMode,
    TaskPhase,
)


class PartyResources(Model):
    cpu: str = ""
    memory: str = ""
    bandwidth: str = ""


class BandwidthLimit(Model):
    destination: str
    limit_kbps: int = Field(ge=0)


class Party(Model):
    domain: str
    role: str = ""
    resources: PartyResources | None = None
    bandwidth_limits: list[BandwidthLimit] = Field(default_factory=list)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_dns_label(v, "party domain")


class ScheduleConfig(Model):
    task_timeout_seconds: int = Field(300, ge=1)
    resource_reserved_seconds: int = Field(30, ge=1)
    resource_reallocation_interval_seconds: int = Field(30, ge=1)


class JobTask(Model):
    alias: str
    task_id: str = Field("", description="globally unique; generated as <job>-<alias> if empty")
    app_image: str
    parties: list[Party] = Field(min_length=1)
    dependencies: list[str] = Field(default_factory=list)
    tolerable: bool = False
    priority: int = 0
    input_config: str = ""
    schedule_config: ScheduleConfig | None = None

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        return check_dns_label(v, "task alias")

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, v: str) -> str:
        return check_dns_label(v, "task_id") if v else v

    @model_validator(mode="after")
    def _unique_parties(self) -> JobTask:
        seen: set[tuple[str, str]] = set()
        for p in self.parties:
            if (p.domain, p.role) in seen:
                raise ValueError(f"party {p.domain!r} (role {p.role!r}) is listed twice")
            seen.add((p.domain, p.role))
        return self


class JobSpec(Model):
    initiator: str
    flow_id: str = ""
    schedule_mode: ScheduleMode = ScheduleMode.STRICT
    max_parallelism: int = Field(1, ge=1, le=128)
    tasks: list[JobTask] = Field(min_length=1, max_length=128)
    custom_fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("initiator")
    @classmethod
    def _initiator(cls, v: str) -> str:
        return check_dns_label(v, "initiator")

    @model_validator(mode="after")
    def _unique_aliases(self) -> JobSpec:
        seen: set[str] = set()
        for t in self.tasks:
            if t.alias in seen:
                raise ValueError(f"task alias {t.alias!r} is used by more than one task")
            seen.add(t.alias)
        ids = [t.task_id for t in self.tasks if t.task_id]
        if len(ids) != len(set(ids)):
            raise ValueError("task_id values must be unique within the job")
        return self

    def parties(self) -> list[str]:
        """Every domain that takes part in some task, initiator first, in a stable order."""
        out = [self.initiator]
        for t in self.tasks:
            for p in t.parties:
                if p.domain not in out:
                    out.append(p.domain)
        return out


class StageCommand(Model):
    stage: JobStage = JobStage.CREATE
    version: int = 0
    trigger: str = ""


class JobStatus(Model):
    phase: JobPhase = JobPhase.INITIALIZED
    reason: str = ""
    message: str = ""
    approve_status: dict[str, ApprovalState] = Field(default_factory=dict)
    stage: StageCommand = Field(default_factory=StageCommand)
    task_status: dict[str, TaskPhase] = Field(default_factory=dict, description="alias -> phase")
    task_messages: dict[str, str] = Field(default_factory=dict)
    start_time: datetime | None = None
    completion_time: datetime | None = None
    # Cross-domain jobs (interop): why each party decided as it did, and the node-to-node bookkeeping.
    approve_messages: dict[str, str] = Field(default_factory=dict, description="party -> approval reason")
    sync: dict[str, str] = Field(
        default_factory=dict, description="peer -> digest of the last state that peer acknowledged"
    )


class Job(Resource[JobSpec, JobStatus]):
    KIND = "Job"
    kind: Literal["Job"] = "Job"
    status: JobStatus = Field(default_factory=JobStatus)


class TaskSpec(Model):
    job: str
    alias: str
    initiator: str
    app_image: str
    parties: list[Party] = Field(min_length=1)
    input_config: str = ""
    schedule_config: ScheduleConfig = Field(default_factory=ScheduleConfig)


class AllocatedPort(Model):
    name: str
    port: int
    scope: str = "Cluster"
    protocol: str = "HTTP"


class PartyStatus(Model):
    domain: str
    role: str = ""
    phase: TaskPhase = TaskPhase.PENDING
    message: str = ""
    exit_code: int | None = None
    crashed: bool = False
    endpoints: dict[str, str] = Field(default_factory=dict, description="port name -> endpoint")


class TaskStatus(Model):
    phase: TaskPhase = TaskPhase.PENDING
    message: str = ""
    progress: float = Field(0.0, ge=0.0, le=1.0)
    parties: list[PartyStatus] = Field(default_factory=list)
    allocated_ports: list[AllocatedPort] = Field(default_factory=list)
    work_dir: str = ""
    pid: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    sync: dict[str, str] = Field(
        default_factory=dict, description="peer -> digest of the last state that peer acknowledged"
    )


class Task(Resource[TaskSpec, TaskStatus]):
    KIND = "Task"
    kind: Literal["Task"] = "Task"
    status: TaskStatus = Field(default_factory=TaskStatus)
