"""Services: the use cases of one node, built once and handed to every front door (HTTP, gRPC, Kuscia).

A plain dataclass rather than a dependency-injection framework: the node builds it with
`Services.build(store=..., settings=..., node_info=...)`, tests build it over a MemoryStore, and an API
module receives it as an argument, so what each route depends on is visible in its signature.

`node_info` is supplied by the daemon (it knows the running modules, the isolation in use, uptime); it
may be a plain function or a coroutine function.  Whatever it returns is laid over defaults that every
node can answer alone (domain, version, store type, revision), so a test node needs no daemon.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import accord
from accord.interop.client import PeerClient
from accord.resources.meta import AnyResource
from accord.services.audit import AuditService
from accord.services.data import DataService
from accord.services.jobs import JobService, check_initiator
from accord.services.logs import LogService
from accord.services.resources import ResourceService, Validator
from accord.services.task_configs import validate_job_task_configs
from accord.settings import NodeSettings
from accord.store.base import Store

NodeInfoSource = Callable[[], Any]


@dataclass(frozen=True)
class Services:
    store: Store
    settings: NodeSettings
    resources: ResourceService
    audit: AuditService
    logs: LogService
    data: DataService
    jobs: JobService
    node_info_source: NodeInfoSource | None = field(default=None)

    @classmethod
    def build(
        cls,
        *,
        store: Store,
        settings: NodeSettings,
        node_info: NodeInfoSource | None = None,
        validators: Mapping[str, Validator] | None = None,
        log_poll_seconds: float | None = None,
        peers: PeerClient | None = None,
    ) -> Services:
        # Jobs (interop): a Job created through the API must be initiated by this node; `peers` is the
        # node's PeerClient, through which commands issued here reach a job's initiator.
        def check_job(obj: AnyResource) -> None:
            check_initiator(obj, settings.domain)
            validate_job_task_configs(obj)

        checks: dict[str, Validator] = {"Job": check_job}
        checks.update(validators or {})
        resources = ResourceService(store, settings, checks)
        return cls(
            store=store,
            settings=settings,
            resources=resources,
            audit=AuditService(store),
            logs=LogService(store, settings, poll_seconds=log_poll_seconds),
            data=DataService(store, settings),
            jobs=JobService(store, settings, resources, peers),
            node_info_source=node_info,
        )

    async def node_info(self) -> dict[str, Any]:
        """What `GET /v1/node` answers: defaults overlaid with the daemon's own report."""
        info: dict[str, Any] = {
            "domain": self.settings.domain,
            "version": accord.__version__,
            "protocol_version": accord.PROTOCOL_VERSION,
            "store": type(self.store).__name__,
            "modules": {},
            "isolation": "",
        }
        if self.node_info_source is not None:
            extra = self.node_info_source()
            if inspect.isawaitable(extra):
                extra = await extra
            info.update(dict(extra))
        info["revision"] = await self.store.revision()
        return info
