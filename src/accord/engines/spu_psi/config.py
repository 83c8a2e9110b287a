"""The SPU engine's view of THE psi task config (`accord.engines.psi.config`), and a dispatcher.

One config for both PSI engines: the same `inputs`, `receivers`, `join`, `duplicates`, timeouts and
the same semantics (README; `accord.engines.psi.config`).  `SpuPsiConfig` is that model with three
differences, made by overriding validators rather than editing the shared model:

- `engine` must be `"spu"` (and defaults to it: the `spu-psi` AppImage runs only this engine);
- `protocol` is `"RR22"` (the default: ~10 s for 1M x 1M, the fastest of SPU's two-party protocols on
  this hardware) or `"ECDH"` (SPU's ECDH-PSI on Curve25519, IPP-crypto accelerated; less traffic);
- `workers` and `batch_rows` tune the built-in engine only, so giving them is an error here rather than
  a silently ignored knob.

Timeouts: yacl has one receive timeout per link and it also bounds the wait for the peer's engine to
come up (the link handshake is a receive), so the engine uses `max(peer_wait_s, peer_timeout_s)` for
both.  Under a node a dead peer is noticed sooner anyway: its party fails and the task is stopped.

`parse_task_config` is for the node (submit- and prepare-time validation): it picks the model by the
`engine` field, so one call validates a psi task for either engine with messages naming the field.
This module imports pydantic and the shared config only (never spu), so the node may import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError, field_validator, model_validator

from accord.engines.psi import config as shared
from accord.engines.psi.config import PsiConfig
from accord.engines.psi.errors import ConfigError

ENGINE = "spu"
PROTOCOLS = ("RR22", "ECDH")
PROTOCOL_VERSION = 1
BUILTIN_ONLY = ("workers", "batch_rows")


class SpuPsiConfig(PsiConfig):
    """THE psi task config, as the SPU engine accepts it; see the module docstring."""

    protocol: str = "RR22"
    engine: str = ENGINE

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        upper = value.upper()
        if upper not in PROTOCOLS:
            raise ValueError(f"the spu engine runs {' or '.join(map(repr, PROTOCOLS))} (got {value!r})")
        return upper

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value != ENGINE:
            raise ValueError(f"must be {ENGINE!r} for the spu-psi AppImage (got {value!r})")
        return value

    @model_validator(mode="after")
    def _no_builtin_knobs(self) -> SpuPsiConfig:
        given = sorted(set(BUILTIN_ONLY) & self.model_fields_set)
        if given:
            names = ", ".join(given)
            raise ValueError(f"{names}: tunes the built-in engine only; remove it for engine 'spu'")
        return self

    @property
    def recv_timeout_s(self) -> float:
        """yacl's single receive timeout: the peer wait and the silent-peer limit at once."""
        return max(self.peer_wait_s, self.peer_timeout_s)

    def digest(self) -> str:
        """What both engines must agree on, hashed; exchanged in the hello before any PSI traffic."""
        shape = {
            "version": PROTOCOL_VERSION,
            "engine": ENGINE,
            "protocol": self.protocol,
            "parties": self.parties,
            "receivers": sorted(self.receiver_set),
            "join": self.join,
            "duplicates": self.duplicates,
            "key_count": len(next(iter(self.inputs.values())).keys),
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def parse_config(raw: str | Mapping[str, Any]) -> SpuPsiConfig:
    """Parse and validate for the SPU engine; raises ConfigError naming every bad field."""
    doc = shared.config_document(raw)
    try:
        return SpuPsiConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(shared._format_errors(exc)) from None


def parse_task_config(raw: str | Mapping[str, Any]) -> PsiConfig:
    """Validate a psi task config for whichever engine its `engine` field names (default builtin)."""
    doc = shared.config_document(raw)
    if doc.get("engine") == ENGINE:
        return parse_config(doc)
    return shared.parse_config(doc)
