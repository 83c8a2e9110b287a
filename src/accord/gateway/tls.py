"""TLS on the public port: TLS 1.3 only, mutual certificates, peers pinned by SHA-256 fingerprint.

There is no CA.  A domain's identity is its key pair and self-signed certificate (`accord node init`);
peers exchange certificates out of band (`accord domain add bob --cert bob.crt`) and pin them.  Both
directions check the pin, each in the way the `ssl` module allows:

- **Server side (inbound).**  Python's `ssl` cannot *request* a client certificate without *verifying*
  it, so the server context trusts exactly the pinned peer certificates as anchors
  (`CERT_REQUIRED`, `VERIFY_X509_PARTIAL_CHAIN` so a pinned leaf that is not self-signed works too).
  A client without a certificate or with any other one fails the TLS handshake, before a single HTTP
  byte is read.  That alone would still admit a certificate *issued by* a pinned one (our identity
  certificates are CA:true), so after the handshake the gateway also compares the leaf's fingerprint
  with the pins (`identify`), and that fingerprint, never a header, names the source domain.  The
  context is rebuilt whenever the set of pins changes (a new context per pin set; connections already
  open are re-checked and, for a removed pin, closed by the gateway).  No client CA list is sent, so a
  stranger does not learn who our partners are; no session tickets are issued, so there is no
  resumption that could outlive a pin.
- **Client side (outbound).**  The client context verifies no chain and no host name (`CERT_NONE`);
  TLS 1.3 still checks the server's CertificateVerify signature against the certificate it presented,
  and before any application byte is sent the caller compares that certificate's fingerprint with the
  pin of the domain it meant to reach (`links.PeerConnector`).  Doing the comparison ourselves lets the
  route status say exactly which certificate the peer presented instead of "verify failed".

The private key is handed to OpenSSL through a file in a private temporary directory (0700, removed at
once), because `SSLContext.load_cert_chain` reads only files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from accord.kms.identity import fingerprint, load_certificate

TLS_VERSION = ssl.TLSVersion.TLSv1_3


class Identity:
    """This domain's key and certificate, as TLS needs them."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        load_certificate(cert_pem)  # InvalidArgument early if it is not a certificate
        self.key_pem = key_pem
        self.cert_pem = cert_pem
        self.fingerprint = fingerprint(cert_pem)

    def load_into(self, ctx: ssl.SSLContext) -> None:
        with tempfile.TemporaryDirectory(prefix="accord-tls-") as tmp:
            os.chmod(tmp, 0o700)
            key, cert = Path(tmp, "key.pem"), Path(tmp, "cert.pem")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, self.key_pem)
            finally:
                os.close(fd)
            cert.write_bytes(self.cert_pem)
            ctx.load_cert_chain(cert, key)


def _base(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = TLS_VERSION
    ctx.maximum_version = TLS_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(
    identity: Identity, pinned_pems: Iterable[str], *, allow_anonymous: bool = False
) -> ssl.SSLContext:
    """A server context that completes the handshake only with a client presenting a pinned cert.

    `allow_anonymous` (only while some peer may authenticate by token) also admits clients that
    present no certificate at all; those must then sign every request (`tokens.py`).  A client that
    presents a certificate still needs a pinned one.
    """
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    identity.load_into(ctx)
    ctx.verify_mode = ssl.CERT_OPTIONAL if allow_anonymous else ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    pems = "".join(p if p.endswith("\n") else p + "\n" for p in pinned_pems if p.strip())
    if pems:
        ctx.load_verify_locations(cadata=pems)
    ctx.num_tickets = 0
    return ctx


def client_context(identity: Identity) -> ssl.SSLContext:
    """A client context presenting our certificate; the server's is checked by fingerprint afterwards."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    identity.load_into(ctx)
    return ctx


def anonymous_client_context() -> ssl.SSLContext:
    """A client context without a certificate (token routes); the server is checked by the caller."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def system_client_context() -> ssl.SSLContext:
    """Verify the server against the system CAs and the host name (an institution's own L7 gateway)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peer_fingerprint(writer: asyncio.StreamWriter) -> str | None:
    """SHA-256 fingerprint (hex) of the certificate the other side of a TLS stream presented."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else None


def short(fp: str) -> str:
    """How fingerprints appear in messages: `sha256:0123abcd...`."""
    return f"sha256:{fp[:16]}..." if fp else "none"
