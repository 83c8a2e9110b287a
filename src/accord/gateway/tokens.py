"""Token authentication: for institutions whose L7 gateway terminates TLS (Kuscia's "Token" mode).

When a middlebox terminates TLS, the certificate the peer sees is the middlebox's, so mutual-TLS pinning
cannot name the source.  Token routes authenticate every *request* instead:

**Agreeing a token** (the handshake, `mode: "token"`).  The source draws 16 random bytes, encrypts them
to the destination's pinned public key (RSA-OAEP) and signs the whole request with its own key
(RSA-PSS); the destination checks the signature against the source's pinned certificate, decrypts, draws
its own 16 bytes, encrypts them to the source's key and signs its answer.  Each side now holds both
halves and no one else can: the route token is SHA-256 over both halves and the revision.  A signed
timestamp and nonce make a recorded handshake useless later.

**Keeping it** (`seal` / `unseal`).  Tokens live in the DomainRoute status of both sides (the source's
outbound route, the destination's inbound route `source -> destination` with authentication_type Token,
which is also what allows token authentication from that source), encrypted to the node's own public key,
so the store never holds a usable secret.  Two revisions are kept: a rotation (every
`token_rotation_seconds`) adds a revision and drops the oldest, so requests signed with the previous
token still pass while the new one spreads.

**Signing requests** (`sign_request` / `TokenVerifier`).  Every request on a token route carries

    X-Accord-Source, X-Accord-Token-Revision, X-Accord-Timestamp, X-Accord-Nonce,
    X-Accord-Content-SHA256, X-Accord-Signature = HMAC-SHA256(token, canonical request)

where the canonical request is method, target, host, source, revision, timestamp, nonce and body digest.
Bodies up to `SIGNED_BODY_LIMIT` are hashed; longer or chunked bodies are streamed and signed as
`UNSIGNED-PAYLOAD` (as AWS SigV4 does for streams: the head is authenticated, the body's integrity rests
on the TLS hops).  The receiver accepts a timestamp within `window` seconds and each (source, nonce)
once, so a replayed request is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from accord.errors import ErrorCode
from accord.gateway.refusals import GatewayError
from accord.kms.identity import load_certificate
from accord.resources.domain import DomainRoute, RouteToken

HALF_BYTES = 16
KEEP_REVISIONS = 2
SIGNED_BODY_LIMIT = 4 << 20
UNSIGNED = "UNSIGNED-PAYLOAD"

SOURCE = b"X-Accord-Source"
REVISION = b"X-Accord-Token-Revision"
TIMESTAMP = b"X-Accord-Timestamp"
NONCE = b"X-Accord-Nonce"
DIGEST = b"X-Accord-Content-SHA256"
SIGNATURE = b"X-Accord-Signature"
AUTH_HEADERS = frozenset(h.lower() for h in (SOURCE, REVISION, TIMESTAMP, NONCE, DIGEST, SIGNATURE))

_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


class Unauthenticated(GatewayError):
    """A request on a certificate-less connection without a valid token signature."""

    http_status = 401
    reason = "unauthenticated"
    default_code = ErrorCode.UNAUTHENTICATED


# -- RSA helpers ------------------------------------------------------------------------------------


def _public_key(cert_pem: str | bytes) -> rsa.RSAPublicKey:
    key = load_certificate(cert_pem).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthenticated("token authentication needs RSA domain keys")
    return key


def _private_key(key_pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(key_pem, None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise Unauthenticated("token authentication needs an RSA domain key")
    return key


def encrypt_to(cert_pem: str | bytes, data: bytes) -> str:
    return base64.b64encode(_public_key(cert_pem).encrypt(data, _OAEP)).decode()


def decrypt_with(key_pem: bytes, text: str) -> bytes:
    try:
        return _private_key(key_pem).decrypt(base64.b64decode(text), _OAEP)
    except ValueError as exc:
        raise Unauthenticated(f"cannot decrypt a token half: {exc}") from exc


def _canonical_json(payload: dict[str, Any]) -> bytes:
    body = {k: v for k, v in payload.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_json(key_pem: bytes, payload: dict[str, Any]) -> dict[str, Any]:
    signature = _private_key(key_pem).sign(_canonical_json(payload), _PSS, hashes.SHA256())
    return {**payload, "signature": base64.b64encode(signature).decode()}


def verify_json(cert_pem: str | bytes, payload: dict[str, Any], who: str) -> None:
    try:
        _public_key(cert_pem).verify(
            base64.b64decode(str(payload.get("signature", ""))),
            _canonical_json(payload),
            _PSS,
            hashes.SHA256(),
        )
    except (InvalidSignature, ValueError) as exc:
        raise Unauthenticated(f"the signature of {who} does not match its pinned certificate") from exc


def derive(half_source: bytes, half_destination: bytes, revision: int) -> bytes:
    return hashlib.sha256(
        b"accord-route-token\x00%d\x00" % revision + half_source + half_destination
    ).digest()


def new_half() -> bytes:
    return secrets.token_bytes(HALF_BYTES)


# -- tokens at rest ---------------------------------------------------------------------------------


def seal(own_cert_pem: bytes, token: bytes) -> str:
    """Encrypt a token to this node's own key, for the store."""
    return encrypt_to(own_cert_pem, token)


def merged(existing: Iterable[RouteToken], revision: int, sealed: str, ttl: float) -> list[RouteToken]:
    """The status token list after adding `revision`: newest first, at most KEEP_REVISIONS."""
    from datetime import UTC, datetime, timedelta

    fresh = RouteToken(
        revision=revision,
        token=sealed,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        is_ready=True,
    )
    others = [t for t in existing if t.revision != revision]
    return sorted([fresh, *others], key=lambda t: t.revision, reverse=True)[:KEEP_REVISIONS]


class TokenBook:
    """Decrypted tokens of routes, cached by ciphertext (the RSA decryption happens once per revision)."""

    def __init__(self, key_pem: bytes) -> None:
        self._key = key_pem
        self._cache: dict[str, bytes] = {}
        self._recent: dict[str, list[tuple[int, bytes]]] = {}  # peer -> tokens learned before the store says

    def tokens(self, route: DomainRoute | None, peer: str) -> list[tuple[int, bytes]]:
        """(revision, token) pairs, newest first: the route's status plus any just agreed in memory."""
        found: dict[int, bytes] = dict(self._recent.get(peer, []))
        for item in route.status.tokens if route is not None else []:
            if item.token and item.revision not in found:
                token = self._cache.get(item.token)
                if token is None:
                    token = self._cache[item.token] = decrypt_with(self._key, item.token)
                found[item.revision] = token
        return sorted(found.items(), reverse=True)[:KEEP_REVISIONS]

    def remember(self, peer: str, revision: int, token: bytes) -> None:
        pairs = dict(self._recent.get(peer, []))
        pairs[revision] = token
        self._recent[peer] = sorted(pairs.items(), reverse=True)[:KEEP_REVISIONS]

    def forget(self, peer: str) -> None:
        self._recent.pop(peer, None)


# -- request signatures -----------------------------------------------------------------------------


def _canonical(
    method: bytes, target: bytes, host: bytes, source: str, revision: int, ts: str, nonce: str, digest: str
) -> bytes:
    return b"\n".join(
        [
            method,
            target,
            host.lower(),
            source.encode(),
            b"%d" % revision,
            ts.encode(),
            nonce.encode(),
            digest.encode(),
        ]
    )


def body_digest(body: bytes | None) -> str:
    return UNSIGNED if body is None else hashlib.sha256(body).hexdigest()


def sign_request(
    token: bytes, revision: int, source: str, method: bytes, target: bytes, host: bytes, digest: str
) -> list[tuple[bytes, bytes]]:
    """The authentication header fields of one request."""
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    mac = hmac.new(
        token, _canonical(method, target, host, source, revision, ts, nonce, digest), hashlib.sha256
    )
    return [
        (SOURCE, source.encode()),
        (REVISION, b"%d" % revision),
        (TIMESTAMP, ts.encode()),
        (NONCE, nonce.encode()),
        (DIGEST, digest.encode()),
        (SIGNATURE, mac.hexdigest().encode()),
    ]


class TokenVerifier:
    """Checks request signatures on certificate-less connections, with replay protection."""

    def __init__(self, *, window: float = 120.0) -> None:
        self.window = window
        self._seen: dict[tuple[str, str], float] = {}
        self._pruned = time.monotonic()

    def verify(
        self,
        headers: dict[bytes, bytes],
        method: bytes,
        target: bytes,
        host: bytes,
        tokens_of: Any,
    ) -> tuple[str, str]:
        """(source, digest) if the signature is valid; `tokens_of(source)` lists (revision, token)."""

        def field(name: bytes) -> str:
            value = headers.get(name.lower())
            if value is None:
                raise Unauthenticated(
                    "no client certificate and no token signature: this port needs a pinned certificate, "
                    "or a token route's signed request"
                )
            return value.decode("ascii", "replace")

        source, revision_text, ts, nonce = field(SOURCE), field(REVISION), field(TIMESTAMP), field(NONCE)
        digest, signature = field(DIGEST), field(SIGNATURE)
        try:
            revision, when = int(revision_text), int(ts)
        except ValueError as exc:
            raise Unauthenticated("malformed token revision or timestamp") from exc
        if abs(time.time() - when) > self.window:
            raise Unauthenticated(f"request timestamp is more than {self.window:g} s away from now")
        if not 8 <= len(nonce) <= 128:
            raise Unauthenticated("malformed nonce")
        tokens = dict(tokens_of(source))
        token = tokens.get(revision)
        if token is None:
            raise Unauthenticated(
                f"no token revision {revision} for {source} (known: {sorted(tokens) or 'none'}); "
                "handshake again"
            )
        expected = hmac.new(
            token, _canonical(method, target, host, source, revision, ts, nonce, digest), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise Unauthenticated(f"invalid token signature from {source}")
        self._check_replay(source, nonce)
        return source, digest

    def check_fresh(self, source: str, nonce: str, when: float) -> None:
        """A signed message (a token handshake) must be recent and seen once."""
        if abs(time.time() - when) > self.window:
            raise Unauthenticated(f"handshake timestamp is more than {self.window:g} s away from now")
        self._check_replay(source, nonce)

    def _check_replay(self, source: str, nonce: str) -> None:
        now = time.monotonic()
        if now - self._pruned > self.window:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._pruned = now
        key = (source, nonce)
        if self._seen.get(key, 0.0) > now:
            raise Unauthenticated(f"replayed request from {source} (nonce already used)")
        self._seen[key] = now + 2 * self.window
