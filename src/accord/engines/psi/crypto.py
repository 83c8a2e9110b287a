"""ECDH-PSI over X25519: hash-to-point, the secret scalar, and masking.

Protocol (both parties run the same steps; alice holds X, bob holds Y):

1. Each party draws a fresh random scalar for this task (a, b) that never leaves its process tree.
2. Hash-to-point: H(k) = SHA-256(b"accord-psi-v1\\0" || len(task id) || task id || enc(k)), taken as an
   X25519 u-coordinate.  enc(k) is the key tuple with every column length-prefixed (4 bytes, big
   endian, then the UTF-8 text), so ("ab", "c") and ("a", "bc") differ, and the task id separates the
   points of different tasks even for the same keys.
3. Masking is X25519 itself: mask(s, P) = X25519(s, P) = u([clamp(s)]P).  Scalar multiplication
   commutes, so X25519(a, X25519(b, H(k))) == X25519(b, X25519(a, H(k))): the *doubly-masked* value
   a·b·H(k) is the same whichever party masks first, and equal only for equal keys.
4. alice sends a·H(x) for her distinct keys (shuffled); bob answers with b·(a·H(x)) in the order
   received, so alice can map each doubly-masked value back to her rows; bob sends b·H(y) (shuffled) and
   alice computes a·(b·H(y)).  alice's rows whose value is in {a·b·H(y)} are the intersection.  With two
   receivers the same happens in the other direction.

What each party learns: the peer's number of distinct keys, and -- only if it is a receiver -- which of
its own rows are in the intersection.  Under the decisional Diffie-Hellman assumption a·H(x) and
a·b·H(y) look random to the party without the scalar, so non-matching keys stay hidden (as in every
ECDH-PSI, this is semi-honest security; a party that lies about its set is not detected).

About the curve: a random 32-byte u lies either on Curve25519 or on its quadratic twist; X25519 is a
well-defined commutative map on both, and the twist has a large prime-order subgroup (Curve25519 was
chosen to be twist-secure), so every hash output is usable without rejection sampling.  Clamping makes
every scalar a multiple of the cofactor 8, which kills the small-order components.  An all-zero result
(a small-order input) is rejected by `cryptography`; for our own hashes that happens with probability
about 2^-250, for points from the peer it means the peer is broken or malicious.

Cost: one X25519 per distinct key of each side per party (about 30-50 µs each with `cryptography`'s
OpenSSL backend), which is why `workers.py` spreads masking across processes.  This module is imported
by the worker processes, so it depends only on the standard library and `cryptography`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from accord.engines.psi.errors import ProtocolMismatch

POINT_SIZE = 32
DOMAIN_TAG = b"accord-psi-v1\x00"


class InvalidPoint(ProtocolMismatch):
    """A point that X25519 refuses (small order): a broken or malicious peer, never an honest one."""


def new_scalar() -> bytes:
    """A fresh secret scalar (32 random bytes; X25519 clamps them)."""
    return secrets.token_bytes(32)


def hash_prefix(task_id: str) -> bytes:
    """The domain-separation prefix of H for one task."""
    task = task_id.encode()
    return DOMAIN_TAG + len(task).to_bytes(4, "big") + task


def hash_single_keys(prefix: bytes, keys: Iterable[str]) -> bytes:
    """H(k) for one-column keys, concatenated (32 bytes each).  No key may be None."""
    base = hashlib.sha256(prefix)
    out = bytearray()
    for key in keys:
        text = key.encode()
        h = base.copy()
        h.update(len(text).to_bytes(4, "big"))
        h.update(text)
        out += h.digest()
    return bytes(out)


def hash_multi_keys(prefix: bytes, columns: Sequence[Sequence[str]]) -> bytes:
    """H(k) for multi-column keys given column-wise, concatenated (32 bytes each).  No None values."""
    base = hashlib.sha256(prefix)
    out = bytearray()
    for row in zip(*columns, strict=True):
        h = base.copy()
        for value in row:
            text = value.encode()
            h.update(len(text).to_bytes(4, "big"))
            h.update(text)
        out += h.digest()
    return bytes(out)


class MaskKey:
    """Applies one party's secret scalar to a run of points."""

    def __init__(self, scalar: bytes) -> None:
        self._key = X25519PrivateKey.from_private_bytes(scalar)

    def mask(self, points: bytes) -> bytes:
        """X25519(scalar, P) for each 32-byte P in `points`, concatenated in the same order."""
        if len(points) % POINT_SIZE:
            raise ProtocolMismatch(f"a point batch of {len(points)} bytes is not a multiple of {POINT_SIZE}")
        exchange = self._key.exchange
        from_bytes = X25519PublicKey.from_public_bytes
        try:
            return b"".join(
                [exchange(from_bytes(points[i : i + POINT_SIZE])) for i in range(0, len(points), POINT_SIZE)]
            )
        except ValueError as exc:
            raise InvalidPoint(f"a point of small order was rejected ({exc})") from None
