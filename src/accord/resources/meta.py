"""The envelope every stored object shares: `meta` + `spec` + `status`, and name/label rules.

A resource is a pydantic model with three parts (DESIGN.md section 2): `meta` (identity and bookkeeping,
written by the store), `spec` (what the user asked for) and `status` (what controllers observed).  The
store owns `meta.uid`, `meta.resource_version` and the timestamps; callers never invent them.

Names follow DNS-label rules (RFC 1123: lower-case letters, digits and '-', at most 63 characters, not
starting or ending with '-') because they become host names (`<service>.<domain>.svc`), file names and
label values.  Label selectors use the Kubernetes equality syntax: `a=b,c!=d,e,!f`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accord.errors import InvalidArgument
from accord.names import check_dns_label

LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    """Base of all spec/status parts: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=False)


class ObjectMeta(Model):
    name: str
    domain: str = Field("", description="the domain that owns the object ('' = this node's)")
    uid: str = ""
    resource_version: int = Field(0, ge=0, description="store revision of the last write")
    generation: int = Field(0, ge=0, description="incremented on every spec change")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, v: str) -> str:
        return check_dns_label(v)

    @field_validator("domain")
    @classmethod
    def _domain_is_dns_label(cls, v: str) -> str:
        return check_dns_label(v, "domain") if v else v

    @field_validator("labels")
    @classmethod
    def _labels_valid(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} is invalid")
            if not LABEL_VALUE.match(value):
                raise ValueError(f"label {key!r} has an invalid value {value!r}")
        return v


SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=BaseModel)


class Resource(Model, Generic[SpecT, StatusT]):
    """A stored object. Subclasses fix `kind` (a Literal field) and the spec/status types."""

    KIND: ClassVar[str] = ""
    api_version: str = "accord/v1"
    kind: str
    meta: ObjectMeta
    spec: SpecT
    status: StatusT

    @property
    def name(self) -> str:
        return self.meta.name

    def key(self) -> tuple[str, str]:
        return (self.kind, self.meta.name)

    def to_document(self) -> dict[str, Any]:
        """JSON-ready dict (what the API returns and `accord get -o yaml` prints)."""
        return self.model_dump(mode="json")


AnyResource = Resource[Any, Any]


class Selector(Model):
    """A parsed label selector; `matches(labels)` decides membership."""

    equals: dict[str, str] = Field(default_factory=dict)
    not_equals: dict[str, str] = Field(default_factory=dict)
    exists: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        return (
            all(labels.get(k) == v for k, v in self.equals.items())
            and all(labels.get(k) != v for k, v in self.not_equals.items())
            and all(k in labels for k in self.exists)
            and all(k not in labels for k in self.absent)
        )

    @classmethod
    def parse(cls, text: str | dict[str, str] | None) -> Selector:
        """Parse `a=b,c!=d,e,!f` (or a plain dict of equalities)."""
        if text is None:
            return cls()
        if isinstance(text, dict):
            return cls(equals=dict(text))
        sel = cls()
        for raw in text.split(","):
            term = raw.strip()
            if not term:
                continue
            if "!=" in term:
                k, v = term.split("!=", 1)
                sel.not_equals[k.strip()] = v.strip()
            elif "==" in term or "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                sel.equals[k.strip()] = v.strip()
            elif term.startswith("!"):
                sel.absent.append(term[1:].strip())
            else:
                sel.exists.append(term)
        for key in [*sel.equals, *sel.not_equals, *sel.exists, *sel.absent]:
            if not LABEL_KEY.match(key):
                raise InvalidArgument(f"label selector {text!r}: {key!r} is not a valid label key")
        return sel
