"""Kind name -> model class, and turning raw dicts into typed resources with precise errors."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from accord.errors import ErrorCode, InvalidArgument, invalid
from accord.resources.appimage import AppImage
from accord.resources.audit import AuditRecord
from accord.resources.data import DomainData, DomainDataGrant, DomainDataSource
from accord.resources.deployment import Deployment
from accord.resources.domain import Domain, DomainRoute
from accord.resources.job import Job, Task
from accord.resources.meta import AnyResource

KINDS: dict[str, type[AnyResource]] = {
    cls.KIND: cls
    for cls in (
        Domain,
        DomainRoute,
        AppImage,
        Job,
        Task,
        Deployment,
        DomainDataSource,
        DomainData,
        DomainDataGrant,
        AuditRecord,
    )
}

# Lower-case and plural spellings the CLI accepts (`accord get jobs`).
_ALIASES: dict[str, str] = {}
for _kind in KINDS:
    for _alias in (_kind.lower(), _kind.lower() + "s"):
        _ALIASES[_alias] = _kind
_ALIASES.update(
    {
        "route": "DomainRoute",
        "routes": "DomainRoute",
        "data": "DomainData",
        "datasource": "DomainDataSource",
        "datasources": "DomainDataSource",
        "grant": "DomainDataGrant",
        "grants": "DomainDataGrant",
        "audit": "AuditRecord",
        "appimages": "AppImage",
    }
)


def resolve_kind(name: str) -> str:
    """Canonical kind for a user spelling; InvalidArgument listing the known kinds otherwise."""
    if name in KINDS:
        return name
    kind = _ALIASES.get(name.lower())
    if kind is None:
        raise InvalidArgument(
            f"unknown kind {name!r}; known kinds: {', '.join(sorted(KINDS))}",
            code=ErrorCode.UNKNOWN_KIND,
        )
    return kind


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: `spec.tasks[1].alias: task alias 'X' is not a DNS label ...`."""
    parts: list[str] = []
    for err in exc.errors():
        path = ""
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}" if path else msg)
    return "; ".join(parts)


def parse_resource(data: Any, kind: str | None = None) -> AnyResource:
    """Validate a native document (dict with `kind`, `meta`, `spec`) into its model."""
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"a resource document must be a mapping, got {type(data).__name__}",
            code=ErrorCode.MALFORMED_DOCUMENT,
        )
    raw_kind = kind or data.get("kind")
    if not raw_kind:
        raise InvalidArgument("document has no 'kind'", code=ErrorCode.MALFORMED_DOCUMENT)
    canonical = resolve_kind(str(raw_kind))
    cls = KINDS[canonical]
    body = dict(data)
    body["kind"] = canonical
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise invalid(canonical, f"invalid {canonical}: {format_validation_error(exc)}") from exc
