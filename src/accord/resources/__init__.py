"""Resource models (pure data): what Accord stores, validates and exchanges.

Import the models from here: `from accord.resources import Job, Task, ObjectMeta`.
"""

from accord.resources.appimage import AppImage, AppImageSpec, AppPort
from accord.resources.audit import AuditEntry, AuditRecord, AuditRecordSpec
from accord.resources.data import (
    DomainData,
    DomainDataGrant,
    DomainDataGrantSpec,
    DomainDataSource,
    DomainDataSourceSpec,
    DomainDataSpec,
)
from accord.resources.deployment import Deployment, DeploymentSpec
from accord.resources.domain import Domain, DomainRoute, DomainRouteSpec, DomainSpec
from accord.resources.job import Job, JobSpec, JobStatus, JobTask, Party, Task, TaskSpec, TaskStatus
from accord.resources.meta import AnyResource, ObjectMeta, Resource, Selector, utcnow
from accord.resources.phases import (
    JOB_RESTARTABLE,
    JOB_TERMINAL,
    TASK_TERMINAL,
    JobPhase,
    JobStage,
    RoutePhase,
    ScheduleMode,
    TaskPhase,
)
from accord.resources.registry import KINDS, parse_resource, resolve_kind

__all__ = [
    "JOB_RESTARTABLE",
    "JOB_TERMINAL",
    "KINDS",
    "TASK_TERMINAL",
    "AnyResource",
    "AppImage",
    "AppImageSpec",
    "AppPort",
    "AuditEntry",
    "AuditRecord",
    "AuditRecordSpec",
    "Deployment",
    "DeploymentSpec",
    "Domain",
    "DomainData",
    "DomainDataGrant",
    "DomainDataGrantSpec",
    "DomainDataSource",
    "DomainDataSourceSpec",
    "DomainDataSpec",
    "DomainRoute",
    "DomainRouteSpec",
    "DomainSpec",
    "Job",
    "JobPhase",
    "JobSpec",
    "JobStage",
    "JobStatus",
    "JobTask",
    "ObjectMeta",
    "Party",
    "Resource",
    "RoutePhase",
    "ScheduleMode",
    "Selector",
    "Task",
    "TaskPhase",
    "TaskSpec",
    "TaskStatus",
    "parse_resource",
    "resolve_kind",
    "utcnow",
]
