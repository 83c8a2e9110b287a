"""NodeSettings: one frozen value object per node, read TOML file -> env `ACCORD_*` -> CLI flags.

Why frozen and passed explicitly: a module that needs a setting receives the settings object (or the
field) as an argument, so tests build nodes side by side in one process without global state, and a
reader can see from a signature what a module depends on.

Precedence, lowest first: defaults below, `<dir>/accord.toml` (written by `accord node init`), env
variables `ACCORD_<FIELD>` (upper case, e.g. `ACCORD_API_PORT=9000`), then explicit overrides (CLI
flags).  Unknown keys in the TOML file are an error, so a typo never silently keeps a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from accord.errors import InvalidArgument
from accord.names import check_dns_label

CONFIG_FILE = "accord.toml"
ENV_PREFIX = "ACCORD_"


class NodeSettings(BaseModel):
    """Everything a node needs to start. Paths are absolute once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str = Field(description="this node's domain id (DNS label)")
    dir: Path = Field(description="node directory: config, keys, store, task dirs, logs")
    api_host: str = Field("127.0.0.1", description="local API bind address (token-authenticated)")
    api_port: int = Field(8082, ge=0, le=65535, description="local API port (0 = pick a free one)")
    gateway_host: str = Field(
        "127.0.0.1", description="public mTLS port bind address; set 0.0.0.0 to face peers"
    )
    gateway_port: int = Field(8443, ge=0, le=65535, description="public mTLS port")
    egress_port: int = Field(8081, ge=0, le=65535, description="loopback egress port for engines")
    datamesh_port: int = Field(8071, ge=0, le=65535, description="loopback Arrow Flight port")
    store_url: str = Field("", description="SQLAlchemy URL; '' = SQLite at <dir>/accord.db")
    log_level: str = Field("INFO", description="logging level of the node process")
    enable_approval: bool = Field(False, description="participants approve jobs by hand")
    runtime: str = Field("process", description="engine runtime: process (RunP)")
    reconcile_workers: int = Field(16, ge=1, le=1024, description="max concurrent reconciles")
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="graceful stop budget before tasks are cancelled"
    )
    task_timeout_seconds: int = Field(300, ge=1, description="default task lifecycle timeout")
    route_probe_seconds: float = Field(
        15.0, gt=0, description="interval of route health probes (handshake) to each peer"
    )
    watch_poll_seconds: float = Field(
        2.0,
        gt=0,
        description="store watch poll interval: a safety net, since this node's own writes wake watchers "
        "at once; only writes by another process (a shared PostgreSQL) wait for it",
    )
    task_retention_hours: float = Field(
        72.0, ge=0, description="keep a finished task's work dir this long (0 = keep forever)"
    )
    task_sweep_seconds: float = Field(
        600.0, gt=0, description="interval of the sweep that removes expired task work dirs"
    )

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_dns_label(v, "domain")

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.dir / 'accord.db'}"

    @property
    def key_path(self) -> Path:
        return self.dir / "domain.key"

    @property
    def cert_path(self) -> Path:
        return self.dir / "domain.crt"

    @property
    def token_path(self) -> Path:
        return self.dir / "token"

    @property
    def tasks_dir(self) -> Path:
        return self.dir / "tasks"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def run_dir(self) -> Path:
        """What a running node publishes about itself (`endpoints.json`); see `accord.node.endpoints`."""
        return self.dir / "run"

    @property
    def endpoints_path(self) -> Path:
        return self.run_dir / "endpoints.json"

    @property
    def api_url(self) -> str:
        """The configured API address; with `api_port = 0` the running node publishes the real one."""
        return f"http://{self.api_host}:{self.api_port}"

    def to_toml(self) -> str:
        lines = []
        for name, value in self.model_dump(mode="json").items():
            if name == "dir":
                continue
            if isinstance(value, bool):
                lines.append(f"{name} = {'true' if value else 'false'}")
            elif isinstance(value, int | float):
                lines.append(f"{name} = {value}")
            else:
                lines.append(f'{name} = "{value}"')
        return "\n".join(lines) + "\n"


def _coerce_env(name: str, raw: str) -> Any:
    field = NodeSettings.model_fields.get(name)
    if field is not None and field.annotation is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def load_settings(
    directory: Path | str,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> NodeSettings:
    """Load a node's settings from its directory, the environment and explicit overrides."""
    node_dir = Path(directory).expanduser().resolve()
    values: dict[str, Any] = {}
    config = node_dir / CONFIG_FILE
    if config.exists():
        try:
            values.update(tomllib.loads(config.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{config}: malformed TOML: {exc}") from exc
    environ = os.environ if env is None else env
    for name in NodeSettings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and name != "dir":
            values[name] = _coerce_env(name, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    values["dir"] = node_dir
    if "domain" not in values:
        raise InvalidArgument(
            f"{node_dir} is not an Accord node directory (no {CONFIG_FILE} with a domain); "
            "run `accord node init --domain NAME --dir DIR` first"
        )
    try:
        return NodeSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise InvalidArgument(f"invalid node settings ({config}): {problems}") from exc
