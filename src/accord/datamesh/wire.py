"""The DataMesh wire protocol: what a task token grants, the JSON commands, and errors on the wire.

Kept apart from the server (`flight.py`) so the protocol can be read in one place.  Engines cannot import
it (they import only `accord.engines`), so `accord.engines.dataio` speaks the same protocol on its own;
the integration tests run the two against each other.

Commands are JSON objects (Kuscia uses protobuf `Any`; JSON keeps engines free of generated code):

    read    {"type": "read", "domaindata_id": ID, "columns": [..] | null}
    write   {"type": "write", "domaindata_id": NAME, "file_format": "csv" | "parquet",
             "comments": {column: text}, "attributes": {key: value}}
    commit  {"commit": true, "rows": N}      the last (metadata-only) message of a write

Errors cross as Flight errors whose `extra_info` is `{"code", "message"}` from the AccordError catalog.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow.flight as fl
from pydantic import BaseModel, ConfigDict, Field

from accord.errors import (
    AccordError,
    ErrorCode,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

READ_TYPES = frozenset({"read", "CommandDomainDataQuery"})
WRITE_TYPES = frozenset({"write", "CommandDomainDataUpdate"})


class TaskGrant(BaseModel):
    """What a task token entitles its engine to: the data it was given, and whether it may write."""

    model_config = ConfigDict(frozen=True)

    task: str
    job: str = ""
    domain: str = Field(description="the domain the task runs for (the reader, for grant checks)")
    inputs: set[str] = Field(default_factory=set, description="DomainData ids the task was given")
    outputs_allowed: bool = False
    outputs: set[str] = Field(
        default_factory=set, description="the output names the task may create; empty = any new name"
    )
    app: str = Field("", description="the task's app image, matched against a grant's purpose/components")
    grants: dict[str, str] = Field(default_factory=dict, description="data id -> grant name, when known")


TokenResolver = Callable[[str], Awaitable[TaskGrant | None]]


class Aborted(InvalidArgument):
    """A write stream ended without its commit message (the writer died or gave up)."""


def _error_info(exc: AccordError) -> bytes:
    return json.dumps({"code": int(exc.code), "message": exc.message}).encode()


def to_flight_error(exc: AccordError) -> fl.FlightError:
    info = _error_info(exc)
    if isinstance(exc, Unauthenticated):
        return fl.FlightUnauthenticatedError(exc.message, info)
    if isinstance(exc, PermissionDenied):
        return fl.FlightUnauthorizedError(exc.message, info)
    if isinstance(exc, Unavailable):
        return fl.FlightUnavailableError(exc.message, info)
    return fl.FlightServerError(exc.message, info)


def parse_command(raw: bytes, expected: frozenset[str]) -> dict[str, Any]:
    try:
        cmd = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument("the Flight command is not JSON", code=ErrorCode.DATA_INVALID) from exc
    if not isinstance(cmd, dict) or not isinstance(cmd.get("domaindata_id"), str):
        raise InvalidArgument(
            "the Flight command needs a string 'domaindata_id'", code=ErrorCode.DATA_INVALID
        )
    kind = cmd.get("type", "read")
    if kind not in expected:
        raise InvalidArgument(
            f"command type {kind!r} is not valid here (expected one of {sorted(expected)})",
            code=ErrorCode.DATA_INVALID,
        )
    columns = cmd.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise InvalidArgument("'columns' must be a list of column names", code=ErrorCode.DATA_INVALID)
    return cmd


def bearer_token(headers: dict[str, list[Any]]) -> str:
    for value in headers.get("authorization", []):
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return ""


def commit_message(raw: bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        message = None
    if not isinstance(message, dict) or message.get("commit") is not True:
        raise InvalidArgument(
            'unexpected metadata in a write stream: only {"commit": true, "rows": N} is understood',
            code=ErrorCode.DATA_INVALID,
        )
    return message
