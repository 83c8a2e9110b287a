"""Why the gateway said no: one typed error per refusal, rendered as an HTTP answer in one place.

An engine behind the egress port, or a peer's gateway, must learn from a refusal *what to fix*, and a
program must be able to tell refusals apart without parsing prose.  So every refusal carries

- an HTTP status (404 unknown route/service, 403 not allowed, 502/503 peer or engine unreachable, 400 bad
  request, 421 misdirected),
- a short machine slug in the header `X-Accord-Error` (`unknown-route`, `unknown-service`, `not-allowed`,
  `peer-unreachable`, `peer-unauthorized`, `service-unavailable`, `bad-request`, `misdirected`, ...),
- a sentence in `X-Accord-Error-Message` and in the JSON body `{code, message, reason}` (the same
  `{code, message}` shape as every Accord API error, codes from `accord.errors`),
- `X-Accord-Refused-By: <domain>`: which gateway refused, so a refusal that travelled back over two hops
  still says where it happened.

The classes are `AccordError`s, so code that is not HTTP (the route prober) catches them like any other
typed error and reads `.reason` and `.message`.  `refusal_from_response` rebuilds one from a peer's
answer (the egress port turns a peer's refusal of a tunnel into the same typed error).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import ClassVar

from accord.errors import AccordError, ErrorCode

ERROR_HEADER = b"X-Accord-Error"
MESSAGE_HEADER = b"X-Accord-Error-Message"
REFUSED_BY_HEADER = b"X-Accord-Refused-By"

_UNSAFE = re.compile(r"[^\x20-\x7e]")


class GatewayError(AccordError):
    """A refusal: HTTP status + machine reason + message. Subclasses fix status, reason and code."""

    http_status: ClassVar[int] = 502
    reason: ClassVar[str] = "gateway-error"
    default_code = ErrorCode.UNKNOWN

    def response(self, refused_by: str, *, close: bool = True) -> bytes:
        """The whole HTTP/1.1 response (head and JSON body) that tells the client about this refusal."""
        body = json.dumps({"code": int(self.code), "message": self.message, "reason": self.reason}).encode()
        message = _UNSAFE.sub("?", self.message)[:1024].encode("ascii")
        lines = [
            b"HTTP/1.1 %d %s" % (self.http_status, _PHRASES.get(self.http_status, b"Error")),
            ERROR_HEADER + b": " + self.reason.encode(),
            MESSAGE_HEADER + b": " + message,
            REFUSED_BY_HEADER + b": " + refused_by.encode(),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
        if close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


class BadRequest(GatewayError):
    """The request is not strict HTTP/1.1 (smuggling attempts land here) or misses what we need."""

    http_status = 400
    reason = "bad-request"
    default_code = ErrorCode.INVALID_ARGUMENT


class UnknownRoute(GatewayError):
    """No DomainRoute from this domain to the destination (or the Host names no domain)."""

    http_status = 404
    reason = "unknown-route"
    default_code = ErrorCode.ROUTE_NOT_FOUND


class UnknownService(GatewayError):
    """The Host names a service nobody registered here (or whose task has stopped)."""

    http_status = 404
    reason = "unknown-service"
    default_code = ErrorCode.NOT_FOUND


class NotAllowed(GatewayError):
    """The service exists but was not registered for the requesting domain."""

    http_status = 403
    reason = "not-allowed"
    default_code = ErrorCode.PERMISSION_DENIED


class Misdirected(GatewayError):
    """The Host names another domain than the one this gateway serves."""

    http_status = 421
    reason = "misdirected"
    default_code = ErrorCode.INVALID_ARGUMENT


class PeerUnreachable(GatewayError):
    """The peer (or the transit hop) cannot be reached: connection refused, timeout, not TLS ..."""

    http_status = 502
    reason = "peer-unreachable"
    default_code = ErrorCode.ROUTE_UNREACHABLE

    def __init__(self, message: str, *, code: ErrorCode | int | None = None, retryable: bool = True) -> None:
        super().__init__(message, code=code, retryable=retryable)


class PeerUnauthorized(GatewayError):
    """The peer's certificate does not match the pin, or the peer refused ours."""

    http_status = 502
    reason = "peer-unauthorized"
    default_code = ErrorCode.ROUTE_UNAUTHORIZED


class ServiceUnavailable(GatewayError):
    """The service is registered but its engine does not accept connections (not started or exited)."""

    http_status = 503
    reason = "service-unavailable"
    default_code = ErrorCode.PEER_UNREACHABLE

    def __init__(self, message: str, *, code: ErrorCode | int | None = None, retryable: bool = True) -> None:
        super().__init__(message, code=code, retryable=retryable)


class VersionMismatch(GatewayError):
    """The route handshake found no protocol version both sides speak."""

    http_status = 409
    reason = "protocol-version"
    default_code = ErrorCode.ROUTE_UNAUTHORIZED


class UpstreamProtocolError(GatewayError):
    """The upstream answered with something that is not strict HTTP/1.1."""

    http_status = 502
    reason = "bad-gateway"
    default_code = ErrorCode.UNKNOWN


_PHRASES: dict[int, bytes] = {
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    409: b"Conflict",
    421: b"Misdirected Request",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}

_BY_REASON: dict[str, type[GatewayError]] = {
    cls.reason: cls
    for cls in (
        BadRequest,
        UnknownRoute,
        UnknownService,
        NotAllowed,
        Misdirected,
        PeerUnreachable,
        PeerUnauthorized,
        ServiceUnavailable,
        VersionMismatch,
        UpstreamProtocolError,
    )
}


def refusal_from_response(
    status: int,
    headers: Mapping[bytes, bytes],
    *,
    default: type[GatewayError] = PeerUnreachable,
    via: str = "",
) -> GatewayError:
    """The typed refusal a peer's error answer stands for (headers keyed by lower-case name)."""
    reason = headers.get(ERROR_HEADER.lower(), b"").decode("ascii", "replace")
    message = headers.get(MESSAGE_HEADER.lower(), b"").decode("ascii", "replace")
    by = headers.get(REFUSED_BY_HEADER.lower(), b"").decode("ascii", "replace") or via
    cls = _BY_REASON.get(reason, default)
    text = message or f"HTTP {status} without an explanation"
    return cls(f"{by} refused: {text}" if by else text)
