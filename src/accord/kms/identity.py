"""A domain's identity: its RSA key pair and self-signed X.509 certificate, and how peers pin them.

Why RSA-2048: Kuscia's route handshake encrypts token halves with the peer's RSA public key, so an RSA
domain key lets Accord speak that handshake; TLS 1.3 signs with RSA-PSS from the same key.  The
certificate's subject CN is the domain id and it carries a SAN for the domain and `*.<domain>.svc`.
Peers do not trust a CA: each side pins the other's certificate (SHA-256 fingerprint of the DER).

Files (written once by `accord node init`, private parts mode 0600): `domain.key`, `domain.crt`,
`token` (the local API token).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from accord.errors import InvalidArgument

CERT_VALID_DAYS = 3650


def generate_identity(domain: str) -> tuple[bytes, bytes]:
    """A new (private key PEM, self-signed certificate PEM) for `domain`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain), x509.DNSName(f"*.{domain}.svc")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (never world- or group-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_certificate(pem: bytes | str) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM X.509 certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate | bytes | str) -> str:
    """SHA-256 fingerprint (hex) of a certificate's DER encoding: what peers pin."""
    if not isinstance(cert, x509.Certificate):
        cert = load_certificate(cert)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def common_name(cert: x509.Certificate | bytes | str) -> str:
    if not isinstance(cert, x509.Certificate):
        cert = load_certificate(cert)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
