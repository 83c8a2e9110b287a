"""The route handshake: both sides prove their pinned keys and agree on a protocol version.

`POST <path_prefix>/handshake` on host `handshake.<peer>.svc`, over a *fresh* link along the route (direct
or through the transit hop), never a pooled one, so each probe re-tests reachability and the pins.

What proves what:
- TLS 1.3 with mutual certificates: each side signs the handshake transcript with its private key
  (CertificateVerify), and each side accepts only the certificate it pinned for the other.  Reaching the
  handshake handler at all therefore proves that both hold the pinned keys; over a transit route the
  TLS session is end to end, so carol cannot stand in for bob.
- The JSON exchange adds what TLS cannot say: the caller names itself and the domain it meant to reach
  (the answer must come from that domain), both list the protocol versions they speak (the answer
  picks one or refuses with `protocol-version`), the answer echoes a nonce (it is fresh, not replayed)
  and reports the fingerprint of the certificate it saw from the caller (the caller checks that it is its
  own, which catches a TLS-terminating middlebox that re-originates with another certificate).

Request: `{"source", "destination", "protocol_versions": ["1"], "nonce"}`.
Answer: `{"domain", "protocol_version", "nonce", "client_fingerprint", "time"}`.

Token routes (`tokens.py`) use two more modes of the same endpoint, over a connection without a client
certificate: `mode: "token"` agrees a new route token (RSA-signed both ways, halves encrypted to each
other's pinned key; this is the proof of keys when TLS ends at a middlebox), and `mode: "verify"` is the
health probe, signed with the current token; a 401 answer means the peer lost the token and a new one is
agreed at once.

The outcome of a probe is a `ProbeResult(phase, reason)`: Ready, Unreachable (cannot connect, timeout,
the transit hop refused, the endpoint is not an Accord public port) or Unauthorized (the peer presented
another certificate than the pin, the peer refused our certificate because it has no Domain for us or
pins another one, the versions do not meet).
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from accord import PROTOCOL_VERSION
from accord.gateway.http1 import MAX_HEAD_BYTES, Framing, parse_response_head, serialize_head
from accord.gateway.links import PeerConnector, classify_fresh_failure
from accord.gateway.local import PREFIX_HEADER
from accord.gateway.refusals import (
    MESSAGE_HEADER,
    BadRequest,
    GatewayError,
    Misdirected,
    NotAllowed,
    PeerUnauthorized,
    PeerUnreachable,
    VersionMismatch,
    refusal_from_response,
)
from accord.gateway.stream import Stream, StreamClosed, bounded
from accord.gateway.table import RoutingTable
from accord.gateway.tokens import (
    TokenVerifier,
    body_digest,
    decrypt_with,
    derive,
    encrypt_to,
    new_half,
    sign_json,
    sign_request,
    verify_json,
)
from accord.resources.phases import RoutePhase

SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
MAX_HANDSHAKE_BYTES = 16 * 1024
HANDSHAKE_PATH = b"/handshake"

_UNAUTHORIZED = (PeerUnauthorized, NotAllowed, VersionMismatch, Misdirected)


@dataclass(frozen=True)
class ProbeResult:
    phase: RoutePhase
    reason: str
    peer_version: str = ""
    token_revision: int = 0  # a token route's newly agreed token (token handshake), else 0
    token: bytes = b""
    token_unknown: bool = False  # the peer no longer knows our token: agree a new one now


def phase_of(error: GatewayError) -> RoutePhase:
    return RoutePhase.UNAUTHORIZED if isinstance(error, _UNAUTHORIZED) else RoutePhase.UNREACHABLE


def answer(me: str, source: str, source_fingerprint: str, body: bytes) -> dict[str, Any]:
    """The server side: validate a handshake request from TLS-authenticated `source`; raise a refusal."""
    try:
        request = json.loads(body)
        claimed = str(request["source"])
        destination = str(request["destination"])
        versions = [str(v) for v in request["protocol_versions"]]
        nonce = str(request["nonce"])[:128]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"malformed handshake request: {exc}") from exc
    if claimed != source:
        raise NotAllowed(
            f"handshake names source {claimed!r} but the connection is authenticated as {source!r}"
        )
    if destination != me:
        raise Misdirected(f"handshake for {destination!r} reached {me!r}")
    common = [v for v in SUPPORTED_VERSIONS if v in versions]
    if not common:
        raise VersionMismatch(
            f"{me} speaks protocol version(s) {', '.join(SUPPORTED_VERSIONS)}; {source} offered "
            f"{', '.join(versions) or 'none'}"
        )
    return {
        "domain": me,
        "protocol_version": common[-1],
        "nonce": nonce,
        "client_fingerprint": source_fingerprint,
        "time": datetime.now(UTC).isoformat(),
    }


def request_mode(body: bytes) -> str:
    """'mtls' (the default), 'token' (agree a route token) or 'verify' (a token-signed health check)."""
    try:
        mode = json.loads(body).get("mode", "mtls")
    except (ValueError, AttributeError) as exc:
        raise BadRequest(f"malformed handshake request: {exc}") from exc
    if mode not in ("mtls", "token", "verify"):
        raise BadRequest(f"unknown handshake mode {mode!r}")
    return str(mode)


def answer_token(
    me: str, key_pem: bytes, table: RoutingTable, verifier: TokenVerifier, body: bytes
) -> tuple[dict[str, Any], str, int, bytes]:
    """The server side of a token handshake: (signed reply, source, revision, token); raises a refusal."""
    try:
        request = json.loads(body)
        source, destination = str(request["source"]), str(request["destination"])
        versions = [str(v) for v in request["protocol_versions"]]
        nonce, when, revision = str(request["nonce"])[:128], float(request["time"]), int(request["revision"])
        half = str(request["half"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"malformed token handshake: {exc}") from exc
    peer = table.peer(source)
    if peer is None or source not in table.token_sources():
        raise NotAllowed(
            f"{me} accepts no token authentication from {source!r} (it needs a Domain for {source} and a "
            f"route {source} -> {me} with authentication Token)"
        )
    verify_json(peer.cert_pem, request, source)
    verifier.check_fresh(source, nonce, when)
    if destination != me:
        raise Misdirected(f"token handshake for {destination!r} reached {me!r}")
    common = [v for v in SUPPORTED_VERSIONS if v in versions]
    if not common:
        raise VersionMismatch(f"{me} speaks protocol version(s) {', '.join(SUPPORTED_VERSIONS)}")
    if revision < 1:
        raise BadRequest("token revision must be positive")
    ours = new_half()
    token = derive(decrypt_with(key_pem, half), ours, revision)
    reply = sign_json(
        key_pem,
        {
            "domain": me,
            "protocol_version": common[-1],
            "nonce": nonce,
            "revision": revision,
            "half": encrypt_to(peer.cert_pem, ours),
            "time": datetime.now(UTC).isoformat(),
        },
    )
    return reply, source, revision, token


async def probe(
    connector: PeerConnector,
    destination: str,
    *,
    timeout: float = 10.0,
    tokens: list[tuple[int, bytes]] | None = None,
    rotate: bool = False,
) -> ProbeResult:
    """Handshake with `destination` along its route; never raises (the result says what happened).

    On a token route, `tokens` are the route's current (revision, token) pairs, newest first: with none,
    or with `rotate`, a new token is agreed (returned in the result); otherwise the newest one is checked
    with a token-signed health request.
    """
    try:
        return await bounded(_probe(connector, destination, tokens or [], rotate), timeout)
    except TimeoutError:
        return ProbeResult(
            RoutePhase.UNREACHABLE, f"handshake with {destination} timed out after {timeout:g} s"
        )
    except GatewayError as exc:
        return ProbeResult(phase_of(exc), exc.message)


async def _exchange(
    link: Stream, destination: str, target: bytes, fields: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    link.write(
        serialize_head(
            b"POST " + target + b" HTTP/1.1",
            [
                (b"Host", b"handshake.%s.svc" % destination.encode()),
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"),
                *fields,
            ],
        )
        + body
    )
    try:
        await link.drain()
        raw = await link.read_head(MAX_HEAD_BYTES)
        if raw is None:
            raise classify_fresh_failure(None, destination)
        response = parse_response_head(raw, b"POST")
        if response.framing is not Framing.LENGTH or response.length > MAX_HANDSHAKE_BYTES:
            raise PeerUnreachable(f"{destination} answered the handshake without a bounded body")
        payload = await link.read_exact(response.length)
    except (OSError, ssl.SSLError, StreamClosed) as exc:
        raise classify_fresh_failure(exc, destination) from exc
    return response.status, response.headers.first_values(), payload


def _reply(status: int, headers: dict[bytes, bytes], payload: bytes, destination: str) -> dict[str, Any]:
    if status != 200:
        raise refusal_from_response(status, headers, via=destination)
    try:
        reply = json.loads(payload)
        if not isinstance(reply, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise PeerUnreachable(f"{destination} answered the handshake with a malformed body: {exc}") from exc
    return reply


async def _probe_token(
    connector: PeerConnector, destination: str, tokens: list[tuple[int, bytes]], rotate: bool
) -> ProbeResult:
    me = connector.table.me
    peer = connector.table.peer(destination)
    link, plan = await connector.open(destination)
    assert peer is not None  # plan() succeeded, so the peer is pinned
    nonce = secrets.token_hex(16)
    target = plan.path_prefix.encode() + HANDSHAKE_PATH
    try:
        if tokens and not rotate:
            revision, token = tokens[0]
            body = json.dumps(
                {
                    "mode": "verify",
                    "source": me,
                    "destination": destination,
                    "nonce": nonce,
                    "protocol_versions": list(SUPPORTED_VERSIONS),
                }
            ).encode()
            host = b"handshake.%s.svc" % destination.encode()
            fields = sign_request(token, revision, me, b"POST", HANDSHAKE_PATH, host, body_digest(body))
            if plan.path_prefix:
                fields.append((PREFIX_HEADER, plan.path_prefix.encode()))
            status, headers, payload = await _exchange(link, destination, target, fields, body)
            if status == 401:
                message = headers.get(MESSAGE_HEADER.lower(), b"").decode("ascii", "replace")
                return ProbeResult(
                    RoutePhase.UNAUTHORIZED, f"{destination} refused our token: {message}", token_unknown=True
                )
            reply = _reply(status, headers, payload, destination)
            _check_common(reply, destination, nonce)
            version = str(reply["protocol_version"])
            return ProbeResult(
                RoutePhase.READY, f"token ok (revision {revision}, protocol {version})", version
            )
        revision = tokens[0][0] + 1 if tokens else 1
        half = new_half()
        request = sign_json(
            connector.identity.key_pem,
            {
                "mode": "token",
                "source": me,
                "destination": destination,
                "protocol_versions": list(SUPPORTED_VERSIONS),
                "nonce": nonce,
                "time": time.time(),
                "revision": revision,
                "half": encrypt_to(peer.cert_pem, half),
            },
        )
        fields = [(PREFIX_HEADER, plan.path_prefix.encode())] if plan.path_prefix else []
        status, headers, payload = await _exchange(
            link, destination, target, fields, json.dumps(request).encode()
        )
    finally:
        link.abort()
    reply = _reply(status, headers, payload, destination)
    verify_json(peer.cert_pem, reply, destination)
    _check_common(reply, destination, nonce)
    if int(reply.get("revision", -1)) != revision:
        raise PeerUnauthorized(
            f"{destination} answered for token revision {reply.get('revision')}, not {revision}"
        )
    token = derive(half, decrypt_with(connector.identity.key_pem, str(reply["half"])), revision)
    version = str(reply["protocol_version"])
    return ProbeResult(
        RoutePhase.READY, f"token agreed (revision {revision}, protocol {version})", version, revision, token
    )


def _check_common(reply: dict[str, Any], destination: str, nonce: str) -> None:
    if str(reply.get("domain")) != destination:
        raise PeerUnauthorized(f"the handshake was answered by {reply.get('domain')!r}, not {destination!r}")
    if str(reply.get("nonce")) != nonce:
        raise PeerUnauthorized(f"{destination} did not echo the handshake nonce (replayed answer?)")
    if str(reply.get("protocol_version")) not in SUPPORTED_VERSIONS:
        raise VersionMismatch(f"{destination} chose protocol version {reply.get('protocol_version')!r}")


async def _probe(
    connector: PeerConnector, destination: str, tokens: list[tuple[int, bytes]], rotate: bool
) -> ProbeResult:
    if connector.table.plan(destination).token:
        return await _probe_token(connector, destination, tokens, rotate)
    me = connector.table.me
    link, plan = await connector.open(destination)
    try:
        nonce = secrets.token_hex(16)
        body = json.dumps(
            {
                "source": me,
                "destination": destination,
                "protocol_versions": list(SUPPORTED_VERSIONS),
                "nonce": nonce,
            }
        ).encode()
        target = plan.path_prefix.encode() + HANDSHAKE_PATH
        status, headers, payload = await _exchange(link, destination, target, [], body)
    finally:
        link.abort()
    if status != 200:
        raise refusal_from_response(status, headers, via=destination)
    try:
        reply = json.loads(payload)
        domain, version = str(reply["domain"]), str(reply["protocol_version"])
        echoed, seen = str(reply["nonce"]), str(reply["client_fingerprint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerUnreachable(f"{destination} answered the handshake with a malformed body: {exc}") from exc
    if domain != destination:
        raise PeerUnauthorized(f"the handshake was answered by {domain!r}, not {destination!r}")
    if echoed != nonce:
        raise PeerUnauthorized(f"{destination} did not echo the handshake nonce (replayed answer?)")
    if seen != connector.identity.fingerprint:
        raise PeerUnauthorized(
            f"{destination} saw a different certificate from us ({seen[:16]}...) than ours; a middlebox "
            "on the path terminates TLS (use token authentication for such routes)"
        )
    if version not in SUPPORTED_VERSIONS:
        raise VersionMismatch(f"{destination} chose protocol version {version!r}, which we do not speak")
    how = f"through {plan.transit}" if plan.transit else "direct"
    return ProbeResult(RoutePhase.READY, f"handshake ok ({how}, protocol {version})", version)
