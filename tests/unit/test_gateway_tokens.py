"""Token primitives: RSA halves and signatures, sealing at rest, request signatures and replay."""

from __future__ import annotations

import functools
import time

import pytest

from accord.gateway.tokens import (
    UNSIGNED,
    TokenBook,
    TokenVerifier,
    Unauthenticated,
    body_digest,
    decrypt_with,
    derive,
    encrypt_to,
    merged,
    new_half,
    seal,
    sign_json,
    sign_request,
    verify_json,
)
from accord.kms.identity import generate_identity
from accord.resources.domain import DomainRoute


@functools.cache
def ident(name: str) -> tuple[bytes, bytes]:
    return generate_identity(name)


def test_halves_and_signatures() -> None:
    key, cert = ident("bob")
    half = new_half()
    assert decrypt_with(key, encrypt_to(cert, half)) == half
    signed = sign_json(key, {"a": 1, "b": "x"})
    verify_json(cert, signed, "bob")
    with pytest.raises(Unauthenticated, match="does not match its pinned certificate"):
        verify_json(cert, {**signed, "a": 2}, "bob")
    with pytest.raises(Unauthenticated):
        verify_json(ident("carol")[1], signed, "bob")
    assert derive(b"a" * 16, b"b" * 16, 1) != derive(b"a" * 16, b"b" * 16, 2)


def test_sealed_tokens_and_the_book() -> None:
    key, cert = ident("alice")
    route = DomainRoute.model_validate(
        {"meta": {"name": "r"}, "spec": {"source": "alice", "destination": "bob"}}
    )
    tokens = merged([], 1, seal(cert, b"t1" * 16), 60)
    tokens = merged(tokens, 2, seal(cert, b"t2" * 16), 60)
    tokens = merged(tokens, 3, seal(cert, b"t3" * 16), 60)
    assert [t.revision for t in tokens] == [3, 2]  # two revisions kept
    route.status.tokens = tokens
    book = TokenBook(key)
    assert book.tokens(route, "bob") == [(3, b"t3" * 16), (2, b"t2" * 16)]
    book.remember("bob", 4, b"t4" * 16)
    assert [r for r, _ in book.tokens(route, "bob")] == [4, 3]


def _headers(fields: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in fields}


def test_request_signature_and_replay() -> None:
    token = b"k" * 32
    verifier = TokenVerifier(window=60)
    fields = sign_request(token, 7, "alice", b"POST", b"/x", b"svc.bob.svc", body_digest(b"body"))
    tokens = {"alice": [(7, token)]}.get
    assert verifier.verify(_headers(fields), b"POST", b"/x", b"svc.bob.svc", lambda s: tokens(s) or []) == (
        "alice",
        body_digest(b"body"),
    )
    with pytest.raises(Unauthenticated, match="replayed"):
        verifier.verify(_headers(fields), b"POST", b"/x", b"svc.bob.svc", lambda s: tokens(s) or [])
    fresh = sign_request(token, 7, "alice", b"POST", b"/x", b"svc.bob.svc", UNSIGNED)
    for method, target, host in (
        (b"GET", b"/x", b"svc.bob.svc"),
        (b"POST", b"/y", b"svc.bob.svc"),
        (b"POST", b"/x", b"other.bob.svc"),
    ):
        with pytest.raises(Unauthenticated, match="invalid token signature"):
            verifier.verify(_headers(fresh), method, target, host, lambda s: tokens(s) or [])
    stale = _headers(sign_request(token, 7, "alice", b"GET", b"/", b"h", UNSIGNED))
    stale[b"x-accord-timestamp"] = str(int(time.time()) - 600).encode()
    with pytest.raises(Unauthenticated, match="timestamp"):
        verifier.verify(stale, b"GET", b"/", b"h", lambda s: tokens(s) or [])
    other = _headers(sign_request(token, 8, "alice", b"GET", b"/", b"h", UNSIGNED))
    with pytest.raises(Unauthenticated, match="no token revision 8"):
        verifier.verify(other, b"GET", b"/", b"h", lambda s: tokens(s) or [])
    with pytest.raises(Unauthenticated, match="no client certificate and no token signature"):
        verifier.verify({}, b"GET", b"/", b"h", lambda s: [])
