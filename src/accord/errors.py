"""Every error Accord shows a user: one tree, one code catalog, translated once at the edge.

Why a catalog: the user must learn *what to do* from an error and a client must be able to rebuild the
exact error type from `{code, message}` on the wire (the SDK does so).  Codes keep Kuscia's ranges so
KusciaAPI clients see familiar numbers: 111xx generic, 112xx job/task, 113xx domain, 114xx route,
115xx data, 116xx serving, 117xx grant, 118xx datasource, 131xx appimage; 133xx is Accord's audit range.

The tree (catch broadly or narrowly)::

    AccordError(code, message, retryable)
    ├── InvalidArgument      bad input: malformed document, invalid field, cyclic DAG ...   (HTTP 400)
    ├── Unauthenticated      no or wrong token / certificate                               (HTTP 401)
    ├── PermissionDenied     authenticated but not allowed                                 (HTTP 403)
    ├── NotFound             the named object does not exist                               (HTTP 404)
    ├── AlreadyExists        create of an existing name                                    (HTTP 409)
    ├── Conflict             stale resource_version, or a state that forbids the command   (HTTP 409)
    ├── Gone                 a watch asked for history that was compacted                  (HTTP 410)
    └── Unavailable          a dependency (store, peer) is down; retryable                 (HTTP 503)

Retryability is a field on the error (as Temporal's `ApplicationError(non_retryable=)`), so reconcile
loops and clients decide by data, not by guessing from the class.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ErrorCode(IntEnum):
    """Numeric codes; the ranges follow Kuscia's `errorcode` proto."""

    OK = 0
    # 111xx generic
    INVALID_ARGUMENT = 11100
    UNKNOWN = 11101
    UNAUTHENTICATED = 11102
    PEER_UNREACHABLE = 11103
    PERMISSION_DENIED = 11106
    NOT_FOUND = 11107
    ALREADY_EXISTS = 11108
    CONFLICT = 11109
    MALFORMED_DOCUMENT = 11110
    UNKNOWN_KIND = 11111
    STORE_UNAVAILABLE = 11112
    WATCH_EXPIRED = 11113
    # 112xx jobs and tasks
    JOB_INVALID = 11200
    JOB_CREATE_FAILED = 11201
    JOB_NOT_FOUND = 11202
    JOB_EXISTS = 11203
    JOB_DAG_CYCLE = 11204
    JOB_UNKNOWN_DEPENDENCY = 11205
    JOB_UNKNOWN_PARTY = 11206
    JOB_STAGE_INVALID = 11207
    JOB_SUSPEND_NOT_RUNNING = 11210
    JOB_RESTART_NOT_FAILED_OR_SUSPENDED = 11211
    TASK_NOT_FOUND = 11220
    TASK_EXISTS = 11221
    TASK_INVALID = 11222
    # 113xx domains
    DOMAIN_INVALID = 11300
    DOMAIN_NOT_FOUND = 11305
    DOMAIN_EXISTS = 11306
    # 114xx routes
    ROUTE_INVALID = 11400
    ROUTE_NOT_FOUND = 11401
    ROUTE_EXISTS = 11402
    ROUTE_UNREACHABLE = 11403
    ROUTE_UNAUTHORIZED = 11404
    # 115xx data
    DATA_INVALID = 11500
    DATA_NOT_FOUND = 11501
    DATA_EXISTS = 11502
    # 116xx serving / deployments
    DEPLOYMENT_INVALID = 11600
    DEPLOYMENT_NOT_FOUND = 11601
    DEPLOYMENT_EXISTS = 11602
    # 117xx grants
    GRANT_INVALID = 11700
    GRANT_NOT_FOUND = 11701
    GRANT_EXISTS = 11702
    GRANT_DENIED = 11703
    # 118xx data sources
    DATASOURCE_INVALID = 11800
    DATASOURCE_NOT_FOUND = 11801
    DATASOURCE_EXISTS = 11802
    # 131xx app images
    APPIMAGE_INVALID = 13100
    APPIMAGE_NOT_FOUND = 13101
    APPIMAGE_EXISTS = 13102
    # 133xx audit (Accord)
    AUDIT_RECORD_NOT_FOUND = 13301
    AUDIT_CHAIN_BROKEN = 13302


class AccordError(Exception):
    """Base of every error a user may see: a code from the catalog and a message saying what to do."""

    http_status: ClassVar[int] = 500
    default_code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN

    def __init__(self, message: str, *, code: ErrorCode | int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = ErrorCode(code) if code is not None else self.default_code
        self.retryable = retryable

    def to_dict(self) -> dict[str, Any]:
        """The wire form: `{code, message}` as KusciaAPI's `status`."""
        return {"code": int(self.code), "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={int(self.code)}, message={self.message!r})"


class InvalidArgument(AccordError):
    http_status = 400
    default_code = ErrorCode.INVALID_ARGUMENT


class Unauthenticated(AccordError):
    http_status = 401
    default_code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(AccordError):
    http_status = 403
    default_code = ErrorCode.PERMISSION_DENIED


class NotFound(AccordError):
    http_status = 404
    default_code = ErrorCode.NOT_FOUND


class AlreadyExists(AccordError):
    http_status = 409
    default_code = ErrorCode.ALREADY_EXISTS


class Conflict(AccordError):
    http_status = 409
    default_code = ErrorCode.CONFLICT


class Gone(AccordError):
    http_status = 410
    default_code = ErrorCode.WATCH_EXPIRED


class Unavailable(AccordError):
    http_status = 503
    default_code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, message: str, *, code: ErrorCode | int | None = None, retryable: bool = True) -> None:
        super().__init__(message, code=code, retryable=retryable)


# Per-kind codes, so "job x not found" carries 11202 and "domain y not found" 11305.
_KIND_CODES: dict[str, tuple[ErrorCode, ErrorCode, ErrorCode]] = {
    # kind: (invalid, not found, exists)
    "Job": (ErrorCode.JOB_INVALID, ErrorCode.JOB_NOT_FOUND, ErrorCode.JOB_EXISTS),
    "Task": (ErrorCode.TASK_INVALID, ErrorCode.TASK_NOT_FOUND, ErrorCode.TASK_EXISTS),
    "Domain": (ErrorCode.DOMAIN_INVALID, ErrorCode.DOMAIN_NOT_FOUND, ErrorCode.DOMAIN_EXISTS),
    "DomainRoute": (ErrorCode.ROUTE_INVALID, ErrorCode.ROUTE_NOT_FOUND, ErrorCode.ROUTE_EXISTS),
    "DomainData": (ErrorCode.DATA_INVALID, ErrorCode.DATA_NOT_FOUND, ErrorCode.DATA_EXISTS),
    "Deployment": (
        ErrorCode.DEPLOYMENT_INVALID,
        ErrorCode.DEPLOYMENT_NOT_FOUND,
        ErrorCode.DEPLOYMENT_EXISTS,
    ),
    "DomainDataGrant": (ErrorCode.GRANT_INVALID, ErrorCode.GRANT_NOT_FOUND, ErrorCode.GRANT_EXISTS),
    "DomainDataSource": (
        ErrorCode.DATASOURCE_INVALID,
        ErrorCode.DATASOURCE_NOT_FOUND,
        ErrorCode.DATASOURCE_EXISTS,
    ),
    "AppImage": (ErrorCode.APPIMAGE_INVALID, ErrorCode.APPIMAGE_NOT_FOUND, ErrorCode.APPIMAGE_EXISTS),
    "AuditRecord": (
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.AUDIT_RECORD_NOT_FOUND,
        ErrorCode.ALREADY_EXISTS,
    ),
}


def invalid(kind: str, message: str) -> InvalidArgument:
    """An InvalidArgument with the kind's own code (e.g. 11200 for a Job)."""
    codes = _KIND_CODES.get(kind)
    return InvalidArgument(message, code=codes[0] if codes else ErrorCode.INVALID_ARGUMENT)


def not_found(kind: str, name: str) -> NotFound:
    codes = _KIND_CODES.get(kind)
    return NotFound(f"{kind} {name!r} not found", code=codes[1] if codes else ErrorCode.NOT_FOUND)


def already_exists(kind: str, name: str) -> AlreadyExists:
    codes = _KIND_CODES.get(kind)
    return AlreadyExists(
        f"{kind} {name!r} already exists", code=codes[2] if codes else ErrorCode.ALREADY_EXISTS
    )


def stale_version(kind: str, name: str, expected: int, actual: int) -> Conflict:
    return Conflict(
        f"{kind} {name!r} was modified concurrently: resource_version {expected} is stale "
        f"(current is {actual}); re-read the object and retry",
        code=ErrorCode.CONFLICT,
    )


_CLASS_BY_STATUS: dict[int, type[AccordError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    503: Unavailable,
}

# Codes whose class differs from what the HTTP status alone suggests.
_CLASS_BY_CODE: dict[int, type[AccordError]] = {
    int(ErrorCode.ALREADY_EXISTS): AlreadyExists,
    **{int(codes[2]): AlreadyExists for codes in _KIND_CODES.values()},
    int(ErrorCode.PEER_UNREACHABLE): Unavailable,
    int(ErrorCode.ROUTE_UNREACHABLE): Unavailable,
}


def from_wire(code: int, message: str, http_status: int | None = None) -> AccordError:
    """Rebuild a typed error from `{code, message}` (what the client SDK receives)."""
    cls = _CLASS_BY_CODE.get(code) or _CLASS_BY_STATUS.get(http_status or 0, AccordError)
    try:
        typed_code: ErrorCode | int = ErrorCode(code)
    except ValueError:
        typed_code = ErrorCode.UNKNOWN
    return cls(message, code=typed_code)
