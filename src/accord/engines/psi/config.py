"""The PSI task config (`TASK_INPUT_CONFIG`), validated with messages that name the field.

    {
      "protocol": "ECDH",                 # the only protocol of the built-in engine
      "engine": "builtin",                # "spu" configs are for the SPU engine, not this one
      "inputs": {                         # exactly two parties, keyed by domain id
        "alice": {"data": "<domaindata id>", "keys": ["id"]},
        "bob":   {"path": "/data/bob.csv", "keys": ["uid", "day"], "format": "csv"}
      },
      "receivers": ["alice", "bob"],      # who learns the result; default: both
      "join": "inner",                    # "inner" | "left"
      "duplicates": "error",              # "error" | "keep-first" | "keep-all"
      "output_path": "output.csv"         # optional; relative paths are inside the work dir
    }

Semantics (also what the tests check):

- **Keys.** `keys` lists the key columns of that party's own table, in the same order at both parties
  (the column *names* may differ: alice's `id` may meet bob's `uid`; the *count* must match).  Values are
  compared by their text: CSV cells exactly as written, other types by their canonical text (int 7 ->
  "7").  A row with a null in any key column never matches.
- **join.** `inner`: a receiver's output holds its own rows whose key is in the intersection.  `left`: it
  holds all its rows plus a boolean column `_psi_matched`; the matched rows come first (aligned with the
  peer, below), then the unmatched ones in input order.  Either way a receiver sees only its own columns.
- **Alignment.** Matched rows are ordered by the doubly-masked key (a·b·H(key)), which both parties
  compute identically for every key in the intersection and which reveals nothing else, so row i of
  alice's output and row i of bob's output have the same key.
- **duplicates.** `error` (default): a key that appears on more than one row of a party's table fails
  the task before any network traffic (the message gives the count, never the key).  `keep-first`: only
  the first row of each key is used and output; later rows with that key are dropped, also from a left
  join.  `keep-all`: every row is used; with one receiver it gets all its rows of each matched key; with
  two receivers the matched part is the SQL join (the Cartesian product per key), so the outputs stay
  aligned row by row -- this costs one extra round in which each side learns the peer's row count of each
  matched key (which the joined output reveals anyway).  In every mode each distinct key is masked and
  sent once, so the peer never learns how often a key occurs in your table.
- Tuning knobs, all optional: `workers` (crypto processes; default: the CPUs this process may run on;
  0 = in-process), `batch_rows` (rows per input batch), `timeout_s` (whole task), `peer_wait_s` (how long
  to wait for the peer's engine to come up), `peer_timeout_s` (how long a silent peer is tolerated once
  the protocol runs).

Per party, `data` names a DomainData (read through DataMesh) and `path` a local CSV/Parquet file (tests,
benchmarks, runs without a node); exactly one of the two.  Under a node (`ACCORD_DATAMESH` set) only
`data` is accepted and a receiver's output becomes the DomainData `<task id>-output`; without one the
output is `output.csv` in the work dir, or `output_path` (top level, or per party to override it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from accord.engines.psi.errors import ConfigError

PROTOCOL_VERSION = 1
MATCH_COLUMN = "_psi_matched"

JoinType = Literal["inner", "left"]
DuplicatesMode = Literal["error", "keep-first", "keep-all"]


class PartyInput(BaseModel):
    """One party's input: where its table is and which columns form the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = None
    path: str | None = None
    keys: list[str]
    format: Literal["csv", "parquet"] | None = None
    output_path: str | None = None

    @field_validator("keys")
    @classmethod
    def _keys_valid(cls, keys: list[str]) -> list[str]:
        if not keys:
            raise ValueError("must not be empty")
        for key in keys:
            if not key.strip():
                raise ValueError("column names must not be blank")
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"{key!r} is listed twice")
            seen.add(key)
        return keys

    @field_validator("data", "path", "output_path")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> PartyInput:
        if (self.data is None) == (self.path is None):
            raise ValueError("give exactly one of 'data' (a DomainData id) or 'path' (a local file)")
        return self


class PsiConfig(BaseModel):
    """The whole task config; see the module docstring for what each field means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: str = "ECDH"
    engine: str = "builtin"
    inputs: dict[str, PartyInput]
    receivers: list[str] | None = None
    join: JoinType = "inner"
    duplicates: DuplicatesMode = "error"
    output_path: str | None = None
    workers: int | None = Field(default=None, ge=0, le=512)
    batch_rows: int = Field(default=65536, ge=1, le=1 << 24)
    timeout_s: float = Field(default=3600.0, gt=0)
    peer_wait_s: float = Field(default=120.0, gt=0)
    peer_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if value.upper() != "ECDH":
            raise ValueError(
                f"the built-in engine runs only 'ECDH' (got {value!r}; RR22 and KKRT need engine 'spu')"
            )
        return "ECDH"

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value != "builtin":
            raise ValueError(f"must be 'builtin' for this engine (got {value!r})")
        return value

    @field_validator("inputs")
    @classmethod
    def _two_parties(cls, inputs: dict[str, PartyInput]) -> dict[str, PartyInput]:
        if len(inputs) != 2:
            raise ValueError(f"exactly two parties are supported, got {len(inputs)}")
        first, second = inputs.values()
        if len(first.keys) != len(second.keys):
            names = list(inputs)
            raise ValueError(
                f"both parties need the same number of key columns ({names[0]}: {len(first.keys)}, "
                f"{names[1]}: {len(second.keys)})"
            )
        return inputs

    @model_validator(mode="after")
    def _receivers(self) -> PsiConfig:
        if self.receivers is None:
            return self
        if not self.receivers:
            raise ValueError("receivers: must not be empty (name at least one party)")
        for name in self.receivers:
            if name not in self.inputs:
                raise ValueError(f"receivers: {name!r} is not a party of this task")
        if len(set(self.receivers)) != len(self.receivers):
            raise ValueError("receivers: a party is listed twice")
        return self

    @property
    def parties(self) -> list[str]:
        """The two party names, sorted: the order both engines agree on without talking."""
        return sorted(self.inputs)

    @property
    def receiver_set(self) -> frozenset[str]:
        return frozenset(self.parties if self.receivers is None else self.receivers)

    def digest(self) -> str:
        """What both engines must agree on, hashed; exchanged in the handshake.

        Paths, data ids and tuning knobs may legitimately differ between the two copies of the config
        (each node fills in its own); the protocol-relevant fields may not.
        """
        shape = {
            "version": PROTOCOL_VERSION,
            "protocol": self.protocol,
            "parties": self.parties,
            "receivers": sorted(self.receiver_set),
            "join": self.join,
            "duplicates": self.duplicates,
            "key_count": len(next(iter(self.inputs.values())).keys),
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
}


def _format_errors(exc: ValidationError) -> str:
    lines: list[str] = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = _MESSAGES.get(error["type"], str(error["msg"]))
        message = message.removeprefix("Value error, ")
        # model-level checks already start with the field they are about ("receivers: ...")
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)


def config_document(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    """The task config as a JSON object (TASK_INPUT_CONFIG text or an already parsed mapping)."""
    if isinstance(raw, str):
        if not raw.strip():
            raise ConfigError("TASK_INPUT_CONFIG is empty (expected the PSI task config as JSON)")
        try:
            doc: Any = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"TASK_INPUT_CONFIG is not valid JSON: {exc}") from exc
    else:
        doc = dict(raw)
    if not isinstance(doc, dict):
        raise ConfigError(f"TASK_INPUT_CONFIG must be a JSON object, got {type(doc).__name__}")
    return doc


def parse_config(raw: str | Mapping[str, Any]) -> PsiConfig:
    """Parse and validate; raises ConfigError with every problem, each naming its field."""
    doc = config_document(raw)
    try:
        return PsiConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def check_parties(config: PsiConfig, task_parties: Iterable[str], self_party: str) -> None:
    """The config's parties must be exactly the task's parties (from TASK_CLUSTER_DEFINE)."""
    task = sorted(task_parties)
    for name in config.parties:
        if name not in task:
            raise ConfigError(f"inputs: {name!r} is not a party of this task (parties: {', '.join(task)})")
    for name in task:
        if name not in config.inputs:
            raise ConfigError(f"inputs: no input for party {name!r}")
    if self_party not in config.inputs:
        raise ConfigError(f"inputs: no input for this party {self_party!r}")
