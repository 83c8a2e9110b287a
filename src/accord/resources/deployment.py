"""Deployments: long-running multi-party services (online joint prediction, Kuscia's serving)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from accord.resources.meta import Model, Resource


class DeploymentParty(Model):
    domain: str
    app_image: str
    role: str = ""
    replicas: int = Field(1, ge=0, le=64)
    service_name_prefix: str = ""


class DeploymentSpec(Model):
    initiator: str
    input_config: str = ""
    version: str = "1"
    parties: list[DeploymentParty] = Field(min_length=1)


class DeploymentStatus(Model):
    phase: Literal["Progressing", "PartialAvailable", "Available", "Failed"] = "Progressing"
    message: str = ""
    total_parties: int = 0
    available_parties: int = 0


class Deployment(Resource[DeploymentSpec, DeploymentStatus]):
    KIND = "Deployment"
    kind: Literal["Deployment"] = "Deployment"
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)
