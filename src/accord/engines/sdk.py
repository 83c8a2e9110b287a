"""What an engine imports: the engine contract parsed into types, progress reports, result files.

Engines run in their own processes, possibly in their own Python environments (a heavy engine brings its
own interpreter and pins), so this module depends on the standard library and httpx only and never on
the rest of Accord; an import-linter contract keeps `accord.engines` from reaching into the node.  That
is also why its errors are its own (`EngineContractError`), not the node's AccordError tree.

The contract (kuscia.md section 4; Accord adds the `ACCORD_*` variables):

    TASK_ID                 the task's id
    TASK_INPUT_CONFIG       the task's configuration, usually JSON
    TASK_CLUSTER_DEFINE     {"parties":[{"name","role","services":[{"portName","endpoints"}]}],
                             "selfPartyIdx","selfEndpointIdx"}
    ALLOCATED_PORTS         {"ports":[{"name","port","scope","protocol"}]}; the engine must bind these
    KUSCIA_DOMAIN_ID        this party's domain
    ACCORD_NODE_API         the node's local API (optional: progress reports are skipped without it)
    ACCORD_TASK_TOKEN       one-time token for that API
    ACCORD_WORK_DIR         the task's work dir (defaults to the current directory)

Reporting progress is best effort by design: a node that is restarting or busy must never fail a
computation, so a failed report is logged and `report_progress` returns False.  Results go to files in
the work dir (atomically: written then renamed), where the node and the user find them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

log = logging.getLogger("accord.engine")

REQUIRED_VARIABLES = (
    "TASK_ID",
    "TASK_INPUT_CONFIG",
    "TASK_CLUSTER_DEFINE",
    "ALLOCATED_PORTS",
    "KUSCIA_DOMAIN_ID",
)


class EngineContractError(Exception):
    """The environment does not honour the engine contract (a variable is missing or malformed)."""


@dataclass(frozen=True)
class Service:
    port_name: str
    endpoints: list[str]


@dataclass(frozen=True)
class ClusterParty:
    name: str
    role: str
    services: list[Service]

    def endpoint(self, port_name: str) -> str:
        for service in self.services:
            if service.port_name == port_name and service.endpoints:
                return service.endpoints[0]
        raise EngineContractError(f"party {self.name!r} publishes no endpoint for port {port_name!r}")


@dataclass(frozen=True)
class ClusterDefine:
    parties: list[ClusterParty]
    self_party_idx: int
    self_endpoint_idx: int = 0

    @property
    def self_party(self) -> ClusterParty:
        return self.parties[self.self_party_idx]


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    scope: str = "Cluster"
    protocol: str = "HTTP"


def _json_variable(env: Mapping[str, str], name: str) -> Any:
    raw = env[name]
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise EngineContractError(f"{name} is not valid JSON: {exc}") from exc


def _parse_cluster(doc: Any) -> ClusterDefine:
    try:
        parties = [
            ClusterParty(
                name=str(p["name"]),
                role=str(p.get("role", "")),
                services=[
                    Service(port_name=str(s["portName"]), endpoints=[str(e) for e in s.get("endpoints", [])])
                    for s in p.get("services", [])
                ],
            )
            for p in doc["parties"]
        ]
        cluster = ClusterDefine(
            parties=parties,
            self_party_idx=int(doc["selfPartyIdx"]),
            self_endpoint_idx=int(doc.get("selfEndpointIdx", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineContractError(f"TASK_CLUSTER_DEFINE is malformed: {exc!r}") from exc
    if not 0 <= cluster.self_party_idx < len(parties):
        raise EngineContractError(
            f"TASK_CLUSTER_DEFINE: selfPartyIdx {cluster.self_party_idx} is out of range "
            f"({len(parties)} parties)"
        )
    return cluster


def _parse_ports(doc: Any) -> dict[str, Port]:
    try:
        ports = [
            Port(
                name=str(p["name"]),
                port=int(p["port"]),
                scope=str(p.get("scope", "Cluster")),
                protocol=str(p.get("protocol", "HTTP")),
            )
            for p in doc.get("ports", [])
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineContractError(f"ALLOCATED_PORTS is malformed: {exc!r}") from exc
    return {p.name: p for p in ports}


@dataclass(frozen=True)
class TaskContext:
    """The engine contract of the current process, parsed and typed."""

    task_id: str
    domain_id: str
    input_config: str
    cluster: ClusterDefine
    ports: dict[str, Port]
    work_dir: Path
    node_api: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TaskContext:
        """Read the contract from the environment; `EngineContractError` names what is missing."""
        environ = os.environ if env is None else env
        missing = [name for name in REQUIRED_VARIABLES if name not in environ]
        if missing:
            raise EngineContractError(
                f"not started as an engine: missing environment variable(s) {', '.join(missing)} "
                "(the node's runtime sets them; see the engine contract in accord.engines.sdk)"
            )
        return cls(
            task_id=environ["TASK_ID"],
            domain_id=environ["KUSCIA_DOMAIN_ID"],
            input_config=environ["TASK_INPUT_CONFIG"],
            cluster=_parse_cluster(_json_variable(environ, "TASK_CLUSTER_DEFINE")),
            ports=_parse_ports(_json_variable(environ, "ALLOCATED_PORTS")),
            work_dir=Path(environ.get("ACCORD_WORK_DIR") or os.getcwd()),
            node_api=environ.get("ACCORD_NODE_API", ""),
            token=environ.get("ACCORD_TASK_TOKEN", ""),
        )

    def input_json(self) -> Any:
        """TASK_INPUT_CONFIG parsed as JSON (an empty config is `{}`)."""
        if not self.input_config.strip():
            return {}
        try:
            return json.loads(self.input_config)
        except ValueError as exc:
            raise EngineContractError(f"TASK_INPUT_CONFIG is not valid JSON: {exc}") from exc

    def port(self, name: str) -> int:
        """The number of an allocated port, by name."""
        try:
            return self.ports[name].port
        except KeyError:
            raise EngineContractError(
                f"no port named {name!r} was allocated (allocated: {', '.join(sorted(self.ports)) or 'none'})"
            ) from None

    def report_progress(self, progress: float, message: str = "", *, timeout: float = 5.0) -> bool:
        """POST `{progress, message}` to the node; True if accepted. Never raises."""
        if not self.node_api or not self.token:
            log.debug("no node API in the environment; progress %.2f not reported", progress)
            return False
        url = f"{self.node_api.rstrip('/')}/v1/tasks/{self.task_id}/report"
        body = {"progress": max(0.0, min(1.0, float(progress))), "message": message}
        try:
            response = httpx.post(url, json=body, headers={"Token": self.token}, timeout=timeout)
        except httpx.HTTPError as exc:
            log.warning("progress report to %s failed: %s", url, exc)
            return False
        if response.status_code >= 300:
            log.warning(
                "progress report refused by the node: HTTP %d %s", response.status_code, response.text
            )
            return False
        return True

    def write_result(self, name: str, data: Any) -> Path:
        """Write a result file into the work dir: bytes as is, str as text, anything else as JSON."""
        relative = PurePosixPath(name)
        if not name or relative.is_absolute() or ".." in relative.parts:
            raise EngineContractError(f"result name {name!r} must be a relative path inside the work dir")
        path = self.work_dir.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            payload = data
        elif isinstance(data, str):
            payload = data.encode()
        else:
            payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def report_progress(progress: float, message: str = "", context: TaskContext | None = None) -> bool:
    """Module-level shortcut: report for the engine described by the environment."""
    try:
        ctx = context or TaskContext.from_env()
    except EngineContractError as exc:
        log.warning("progress not reported: %s", exc)
        return False
    return ctx.report_progress(progress, message)


def write_result(name: str, data: Any, context: TaskContext | None = None) -> Path:
    """Module-level shortcut: write a result file into the work dir of the current engine."""
    return (context or TaskContext.from_env()).write_result(name, data)


# Data access through the node's DataMesh lives in `accord.engines.dataio` (it needs pyarrow). It is
# re-exported here lazily, so engines that never touch data (hello) do not pay pyarrow's import time.
_DATAIO_NAMES = frozenset(
    {
        "DataMeshClient",
        "OutputWriter",
        "DataMeshError",
        "DataAccessDenied",
        "DataNotFound",
        "DataAlreadyExists",
        "InvalidData",
        "DataMeshUnauthenticated",
        "DataMeshUnreachable",
        "read_table",
        "read_all",
        "write_table",
    }
)


def __getattr__(name: str) -> Any:
    if name in _DATAIO_NAMES:
        from accord.engines import dataio

        return getattr(dataio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProgressReporter:
    """Progress to the node from a background thread, so a slow or restarting node never holds up the
    computation: the latest value wins (older queued ones are skipped), failures are only logged.

    Every call is logged to `logger`; with `min_step`/`min_interval` a call that moved less than
    `min_step` within `min_interval` seconds of the last one shown is dropped (1.0 always passes).
    Without a node API or token (a run outside a node) it only logs.  `close()` sends what is queued
    and stops the thread.
    """

    def __init__(
        self,
        ctx: TaskContext,
        *,
        name: str = "progress",
        logger: logging.Logger | None = None,
        min_step: float = 0.0,
        min_interval: float = 0.0,
    ) -> None:
        self._ctx = ctx
        self._log = logger or log
        self._min_step = min_step
        self._min_interval = min_interval
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._last = (-1.0, 0.0)
        self._thread: threading.Thread | None = None
        if ctx.node_api and ctx.token:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def __call__(self, progress: float, message: str) -> None:
        last_value, last_time = self._last
        now = time.monotonic()
        if progress < 1.0 and progress - last_value < self._min_step and now - last_time < self._min_interval:
            return
        self._last = (progress, now)
        self._log.info("progress %.0f%%: %s", progress * 100, message)
        if self._thread is not None:
            self._queue.put((progress, message))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            while item is not None and not self._queue.empty():
                item = self._queue.get()  # skip to the newest
            if item is None:
                return
            try:
                self._ctx.report_progress(item[0], item[1], timeout=2.0)
            except Exception as exc:  # never fatal
                self._log.warning("progress report failed: %s", exc)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=3)
