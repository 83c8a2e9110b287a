"""accord.audit: verification of the hash-chained audit log (the store appends; this package checks)."""

from accord.audit.chain import ChainReport, verify_chain

__all__ = ["ChainReport", "verify_chain"]
