"""Accord: cross-domain privacy-computing orchestration (one node per institution, one mTLS port)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "1"
