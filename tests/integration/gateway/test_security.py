"""Security: who may talk to a public port, and what never reaches an engine.

Every test ends by asserting that the echo engine saw nothing: refusals happen before any byte of the
request is forwarded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from accord.gateway.tls import Identity, client_context
from tests.integration.gateway.harness import GatewayNode, fresh_identity, mesh, raw_exchange

REQUEST = b"GET /info HTTP/1.1\r\nHost: echo.bob.svc\r\nConnection: close\r\n\r\n"


async def _bob_with_echo(nodes, echo) -> tuple[GatewayNode, GatewayNode]:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await mesh(alice, bob)
    bob.registry.register("echo", echo.port, allowed={"alice"})
    return alice, bob


async def _try(port: int, ctx: ssl.SSLContext, data: bytes = REQUEST) -> str:
    """What a client with `ctx` gets from the public port: the response, or the error."""
    try:
        out = await raw_exchange("127.0.0.1", port, data, ssl_ctx=ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"error: {exc}"
    return out.decode(errors="replace") or "closed"


def _no_cert_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _issued_by(issuer_key_pem: bytes, issuer_cert_pem: bytes, cn: str) -> tuple[bytes, bytes]:
    """A certificate for `cn` signed by a pinned domain's key: valid chain, wrong fingerprint."""
    issuer_key = serialization.load_pem_private_key(issuer_key_pem, None)
    assert isinstance(issuer_key, rsa.RSAPrivateKey)
    issuer = x509.load_pem_x509_certificate(issuer_cert_pem)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


async def test_client_without_certificate_is_refused_at_tls(nodes, echo) -> None:
    _alice, bob = await _bob_with_echo(nodes, echo)
    outcome = await _try(bob.gateway.public_port, _no_cert_context())
    assert "HTTP/1.1" not in outcome
    assert bob.gateway.public.refused_tls == 1
    assert echo.requests == []


async def test_self_signed_stranger_is_refused_at_tls(nodes, echo) -> None:
    _alice, bob = await _bob_with_echo(nodes, echo)
    key, cert = fresh_identity("alice")  # claims to be alice, but is not the pinned certificate
    outcome = await _try(bob.gateway.public_port, client_context(Identity(key, cert)))
    assert "HTTP/1.1" not in outcome
    assert bob.gateway.public.refused_tls == 1
    assert echo.requests == []


async def test_certificate_issued_by_a_pinned_peer_is_refused(nodes, echo) -> None:
    """The chain verifies (alice's certificate is a CA), but only the pinned leaf names a domain."""
    alice, bob = await _bob_with_echo(nodes, echo)
    key, cert = _issued_by(alice.key, alice.cert, "alice")
    outcome = await _try(bob.gateway.public_port, client_context(Identity(key, cert)))
    assert "HTTP/1.1" not in outcome
    assert bob.gateway.public.refused_tls == 1
    assert echo.requests == []


async def test_plain_http_on_the_public_port_is_refused(nodes, echo) -> None:
    _alice, bob = await _bob_with_echo(nodes, echo)
    out = await raw_exchange("127.0.0.1", bob.gateway.public_port, REQUEST)
    assert b"200" not in out
    assert echo.requests == []


async def test_known_domain_cannot_reach_a_service_not_registered_for_it(nodes, echo) -> None:
    _alice, bob = await _bob_with_echo(nodes, echo)
    carol = await nodes("carol")
    await mesh(bob, carol)
    bob.registry.register("secret", echo.port, allowed={"alice"})
    as_carol = carol.tls_client_context()
    out = await _try(
        bob.gateway.public_port,
        as_carol,
        b"GET / HTTP/1.1\r\nHost: secret.bob.svc\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith("HTTP/1.1 403")
    assert "X-Accord-Error: not-allowed" in out
    out = await _try(
        bob.gateway.public_port,
        as_carol,
        b"GET / HTTP/1.1\r\nHost: nope.bob.svc\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith("HTTP/1.1 404") and "X-Accord-Error: unknown-service" in out
    out = await _try(
        bob.gateway.public_port,
        as_carol,
        b"GET / HTTP/1.1\r\nHost: echo.carol.svc\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith("HTTP/1.1 421") and "X-Accord-Error: misdirected" in out
    assert echo.requests == []


POST = b"POST /info HTTP/1.1\r\nHost: echo.bob.svc\r\n"
SMUGGLING = {
    "cl-te": POST + b"Content-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: echo.bob.svc\r\n\r\n",
    "te-cl": POST + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
    "te-obfuscated": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-list": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-twice": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "cl-conflict": POST + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "cl-list": POST + b"Content-Length: 3, 3\r\n\r\nabc",
    "cl-sign": POST + b"Content-Length: +3\r\n\r\nabc",
    "obs-fold": b"GET /info HTTP/1.1\r\nHost: echo.bob.svc\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "bare-lf": b"GET /info HTTP/1.1\r\nHost: echo.bob.svc\nX-A: 1\r\n\r\n",
    "bad-chunk-size": POST + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": POST + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "chunk-without-crlf": POST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcGET /admin HTTP/1.1\r\n\r\n0\r\n\r\n",
    "two-hosts": b"GET /info HTTP/1.1\r\nHost: echo.bob.svc\r\nHost: echo.carol.svc\r\n\r\n",
    "http-0.9": b"GET /info\r\n\r\n",
    "nul-in-header": b"GET /info HTTP/1.1\r\nHost: echo.bob.svc\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
async def test_smuggling_attempts_are_refused_on_egress(nodes, echo, case: str) -> None:
    alice, bob = await _bob_with_echo(nodes, echo)
    await alice.route("bob", bob.endpoint)
    out = await raw_exchange("127.0.0.1", alice.gateway.egress_port, SMUGGLING[case])
    assert out.startswith(b"HTTP/1.1 400"), out[:200]
    assert b"X-Accord-Error: bad-request" in out
    assert out.count(b"HTTP/1.1") == 1  # one answer, and the connection is closed
    assert echo.requests == []


@pytest.mark.parametrize("case", ["cl-te", "te-cl", "obs-fold", "bad-chunk-size", "chunk-without-crlf"])
async def test_smuggling_attempts_are_refused_on_the_public_port(nodes, echo, case: str) -> None:
    alice, bob = await _bob_with_echo(nodes, echo)
    out = await _try(bob.gateway.public_port, alice.tls_client_context(), SMUGGLING[case])
    assert out.startswith("HTTP/1.1 400"), out[:200]
    assert echo.requests == []


async def test_bad_chunk_arriving_late_never_lets_a_second_request_through(nodes, echo) -> None:
    """Framing broken after forwarding began: the engine sees a truncated request, never a smuggled one."""
    alice, bob = await _bob_with_echo(nodes, echo)
    await alice.route("bob", bob.endpoint)
    reader, writer = await asyncio.open_connection("127.0.0.1", alice.gateway.egress_port)
    try:
        writer.write(POST + b"Transfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # let the head be forwarded first
        writer.write(b"3\r\nabc\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: echo.bob.svc\r\n\r\n")
        await writer.drain()
        out = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    assert b"200" not in out.split(b"\r\n", 1)[0]
    assert [r.target for r in echo.requests] in ([], ["/info"])


async def test_only_the_node_may_send_node_to_node_messages_through_egress(nodes, echo) -> None:
    """An engine at alice cannot pose as alice's node: `accord.bob.svc` needs the node's egress secret."""
    alice, bob = await _bob_with_echo(nodes, echo)
    await alice.route("bob", bob.endpoint)
    bob.registry.register("accord", echo.port, allowed={"*"})
    forged = (
        b"POST /interop/v1/jobs/propose HTTP/1.1\r\nHost: accord.bob.svc\r\nConnection: close\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    out = await raw_exchange("127.0.0.1", alice.gateway.egress_port, forged)
    assert out.startswith(b"HTTP/1.1 403"), out[:200]
    assert b"only this node may send them" in out
    wrong = forged.replace(b"Content-Length", b"X-Accord-Node-Secret: guess\r\nContent-Length")
    out = await raw_exchange("127.0.0.1", alice.gateway.egress_port, wrong)
    assert out.startswith(b"HTTP/1.1 403"), out[:200]
    assert echo.requests == []
    secret = alice.gateway.node_secret.encode()
    real = forged.replace(b"Content-Length", b"X-Accord-Node-Secret: " + secret + b"\r\nContent-Length")
    out = await raw_exchange("127.0.0.1", alice.gateway.egress_port, real)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert len(echo.requests) == 1
    assert secret not in repr(echo.requests[0]).encode()  # stripped before it leaves the machine
