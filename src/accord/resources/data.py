"""Data sources, the data they hold, and the grants that let other domains use it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from accord.resources.meta import Model, Resource
from accord.resources.phases import DataPhase


class DomainDataSourceSpec(Model):
    type: Literal["localfs", "s3", "oss", "mysql", "postgresql", "odps", "hive", "dameng"]
    name: str = ""
    uri: str = ""
    info: dict[str, Any] = Field(
        default_factory=dict, description="connection info; secrets are encrypted at rest"
    )
    access_directly: bool = False


class DomainDataSourceStatus(Model):
    phase: DataPhase = DataPhase.UNKNOWN
    message: str = ""


class DomainDataSource(Resource[DomainDataSourceSpec, DomainDataSourceStatus]):
    KIND = "DomainDataSource"
    kind: Literal["DomainDataSource"] = "DomainDataSource"
    status: DomainDataSourceStatus = Field(default_factory=DomainDataSourceStatus)


class DataColumn(Model):
    name: str
    type: str = "str"
    comment: str = ""
    not_nullable: bool = False


class Lineage(Model):
    inputs: list[str] = Field(default_factory=list)
    task: str = ""
    job: str = ""


class DomainDataSpec(Model):
    name: str = ""
    type: str = "table"
    relative_uri: str
    datasource: str = "default-data-source"
    author: str = ""
    vendor: str = "manual"
    file_format: Literal["CSV", "PARQUET", "BINARY", "UNKNOWN"] = "CSV"
    attributes: dict[str, str] = Field(default_factory=dict)
    columns: list[DataColumn] = Field(default_factory=list)
    lineage: Lineage = Field(default_factory=Lineage)


class DomainDataStatus(Model):
    phase: DataPhase = DataPhase.AVAILABLE
    message: str = ""


class DomainData(Resource[DomainDataSpec, DomainDataStatus]):
    KIND = "DomainData"
    kind: Literal["DomainData"] = "DomainData"
    status: DomainDataStatus = Field(default_factory=DomainDataStatus)


class GrantLimit(Model):
    expiration_time: datetime | None = None
    use_count: int | None = Field(None, ge=0)
    grant_mode: list[str] = Field(default_factory=list)
    flow_id: str = ""
    components: list[str] = Field(default_factory=list)
    initiator: str = ""
    input_config: str = ""


class DomainDataGrantSpec(Model):
    author: str
    domaindata_id: str
    grant_domain: str
    columns: list[str] = Field(default_factory=list, description="empty = all columns")
    purpose: str = ""
    signature: str = ""
    limit: GrantLimit = Field(default_factory=GrantLimit)
    description: dict[str, str] = Field(default_factory=dict)


class GrantUse(Model):
    use_time: datetime
    grant_domain: str
    component: str = ""
    output: str = ""
    task: str = ""


class DomainDataGrantStatus(Model):
    phase: Literal["Ready", "Unavailable", "Unknown"] = "Ready"
    message: str = ""
    uses: int = 0
    use_records: list[GrantUse] = Field(default_factory=list)


class DomainDataGrant(Resource[DomainDataGrantSpec, DomainDataGrantStatus]):
    KIND = "DomainDataGrant"
    kind: Literal["DomainDataGrant"] = "DomainDataGrant"
    status: DomainDataGrantStatus = Field(default_factory=DomainDataGrantStatus)
