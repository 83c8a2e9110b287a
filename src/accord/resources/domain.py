"""Domains (this node and the peers it knows) and the routes to reach them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from accord.names import check_dns_label
from accord.resources.meta import Model, Resource
from accord.resources.phases import RoutePhase

InterconnProtocol = Literal["accord", "kuscia", "bfia"]


def _default_protocols() -> list[InterconnProtocol]:
    return ["accord"]


class DomainSpec(Model):
    role: Literal["", "partner"] = Field(
        "", description="'' = this node's own domain; 'partner' = a peer known by its certificate"
    )
    cert: str = Field("", description="PEM certificate of the domain (pinned for peers)")
    interconn_protocols: list[InterconnProtocol] = Field(default_factory=_default_protocols)
    master: str = ""


class DomainStatus(Model):
    cert_fingerprint: str = ""
    message: str = ""


class Domain(Resource[DomainSpec, DomainStatus]):
    KIND = "Domain"
    kind: Literal["Domain"] = "Domain"
    spec: DomainSpec = Field(default_factory=DomainSpec)
    status: DomainStatus = Field(default_factory=DomainStatus)


class RouteToken(Model):
    revision: int = 0
    token: str = Field("", description="route token, encrypted at rest")
    expires_at: datetime | None = None
    is_ready: bool = False


class DomainRouteSpec(Model):
    source: str
    destination: str
    endpoint: str = Field("", description="https://HOST:PORT of the destination's public port")
    transit: str = Field("", description="domain to forward through ('' = direct)")
    path_prefix: str = ""
    authentication_type: Literal["MTLS", "Token"] = "MTLS"
    interconn_protocol: Literal["accord", "kuscia", "bfia"] = "accord"
    token_rotation_seconds: int = Field(0, ge=0)

    @field_validator("source", "destination")
    @classmethod
    def _domains(cls, v: str) -> str:
        return check_dns_label(v, "domain")

    @field_validator("transit")
    @classmethod
    def _transit(cls, v: str) -> str:
        return check_dns_label(v, "transit domain") if v else v


class DomainRouteStatus(Model):
    phase: RoutePhase = RoutePhase.PENDING
    reason: str = ""
    last_probe_at: datetime | None = None
    last_ready_at: datetime | None = None
    peer_version: str = ""
    tokens: list[RouteToken] = Field(default_factory=list)


class DomainRoute(Resource[DomainRouteSpec, DomainRouteStatus]):
    KIND = "DomainRoute"
    kind: Literal["DomainRoute"] = "DomainRoute"
    status: DomainRouteStatus = Field(default_factory=DomainRouteStatus)
