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
from accord.services.audit import AuditService
from accord.services.data import DataService
from accord.services.logs import LogService
from accord.services.resources import ResourceService, Validator
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
    ) -> Services:
        return cls(
            store=store,
            settings=settings,
            resources=ResourceService(store, settings, validators),
            audit=AuditService(store),
            logs=LogService(store, settings, poll_seconds=log_poll_seconds),
            data=DataService(store, settings),
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
