"""One party's DataMesh as a node runs it -- a real Flight service on 127.0.0.1 over an in-memory store --
for engine tests that read their inputs from and write their outputs to DataMesh."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from accord.datamesh.flight import DataMeshService, TaskGrant
from accord.datamesh.registry import ensure_default_source, register_file
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore


@dataclass
class Node:
    """One party's DataMesh (real Flight service over an in-memory store), as a node runs it."""

    store: MemoryStore
    service: DataMeshService
    tokens: dict[str, TaskGrant]


@contextlib.asynccontextmanager
async def datamesh_node(tmp_path: Path, domain: str, tables: dict[str, str]) -> AsyncIterator[Node]:
    store = MemoryStore()
    settings = NodeSettings(domain=domain, dir=tmp_path / f"node-{domain}", datamesh_port=0)
    await ensure_default_source(store, settings)
    for name, path in tables.items():
        await register_file(store, settings, name, path, column_types={"id": "str"})
    tokens: dict[str, TaskGrant] = {}

    async def resolve(token: str) -> TaskGrant | None:
        return tokens.get(token)

    service = DataMeshService(store, settings, resolve)
    runner = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield Node(store, service, tokens)
    finally:
        service.request_stop()
        await asyncio.wait_for(runner, 20)
