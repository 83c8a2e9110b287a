"""AppImage: how to run an engine (command, ports, config templates, resources, protocol versions).

Kuscia's AppImage describes containers (`deployTemplates`); Accord's RunP runs processes, so the spec
has a direct `command` plus the Kuscia fields kept verbatim for lossless round trips and for RunK.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from accord.resources.meta import Model, Resource


class ImageRef(Model):
    name: str = ""
    tag: str = ""
    id: str = ""
    sign: str = ""


class AppPort(Model):
    name: str
    protocol: Literal["HTTP", "GRPC", "TCP"] = "HTTP"
    scope: Literal["Cluster", "Domain", "Local"] = "Cluster"


class ResourceNeeds(Model):
    cpu: str = ""
    memory: str = ""


class AppImageSpec(Model):
    image: ImageRef = Field(default_factory=ImageRef)
    command: list[str] = Field(default_factory=list, description="argv run by RunP")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str = ""
    ports: list[AppPort] = Field(default_factory=list)
    config_templates: dict[str, str] = Field(default_factory=dict)
    config_mounts: dict[str, str] = Field(
        default_factory=dict, description="template name -> path (relative to the task dir)"
    )
    resources: ResourceNeeds = Field(default_factory=ResourceNeeds)
    protocol_versions: list[str] = Field(default_factory=lambda: ["1"])
    deploy_templates: list[dict[str, Any]] = Field(
        default_factory=list, description="Kuscia deployTemplates, kept verbatim"
    )


class AppImageStatus(Model):
    message: str = ""


class AppImage(Resource[AppImageSpec, AppImageStatus]):
    KIND = "AppImage"
    kind: Literal["AppImage"] = "AppImage"
    status: AppImageStatus = Field(default_factory=AppImageStatus)
