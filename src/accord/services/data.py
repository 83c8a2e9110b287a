"""DataService: the use cases behind `accord data add | list | head` (and their API routes).

Thin over `accord.datamesh`: registration rules (atomic copy, inferred typed columns, no overwrite,
typed errors) live in the registry so the Flight service's outputs obey the same ones.  What this
layer adds is what only a *user's* request needs:

- the default data source is created on first use if the node has not done it yet, so `data add` works
  on a node that was started before DataMesh existed;
- `head` reads through the data source on a worker thread (Arrow I/O blocks) and is bounded
  (`MAX_HEAD_ROWS`), because it answers an HTTP request and must never load a whole table;
- reading a table's rows is a data access, so `head` is audited (`data.head`) like an engine's read.
  It is a local user looking at their own domain's data; no grant is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from accord.datamesh.columns import schema_from_columns
from accord.datamesh.registry import (
    DEFAULT_SOURCE,
    ensure_default_source,
    get_data,
    get_source,
    register_file,
)
from accord.datamesh.sources import DataSource, FileFormat
from accord.errors import ErrorCode, InvalidArgument
from accord.resources.audit import AuditEntry
from accord.resources.data import DataColumn, DomainData
from accord.settings import NodeSettings
from accord.store.base import Store

DEFAULT_HEAD_ROWS = 10
MAX_HEAD_ROWS = 1000


class DataHead(BaseModel):
    """The first rows of a DomainData: column descriptions and rows as lists, aligned with `columns`."""

    name: str
    columns: list[DataColumn]
    rows: list[list[Any]] = Field(default_factory=list)


def _first_rows(data: DomainData, source: DataSource, rows: int) -> tuple[list[str], list[list[Any]]]:
    file_format: FileFormat = "PARQUET" if data.spec.file_format == "PARQUET" else "CSV"
    # Registered types matter only for CSV (Parquet carries its own, some without a short name).
    schema = schema_from_columns(data.spec.columns) if file_format == "CSV" and data.spec.columns else None
    reader = source.open_reader(data.spec.relative_uri, file_format=file_format, schema=schema)
    names = list(reader.schema.names)
    out: list[list[Any]] = []
    for batch in reader:
        take = batch.slice(0, rows - len(out))
        columns = [take.column(i).to_pylist() for i in range(take.num_columns)]
        out.extend([list(row) for row in zip(*columns, strict=True)] if columns else [])
        if len(out) >= rows:
            break
    return names, out


class DataService:
    def __init__(self, store: Store, settings: NodeSettings) -> None:
        self._store = store
        self._settings = settings

    async def add(
        self,
        name: str,
        path: Path | str,
        file_format: str | None = None,
        *,
        datasource: str = DEFAULT_SOURCE,
        link: bool = False,
        column_types: Mapping[str, str] | None = None,
        actor: str = "user",
    ) -> DomainData:
        """Register a file on the node's machine as DomainData `name` (copied into the data source)."""
        if datasource == DEFAULT_SOURCE:
            await ensure_default_source(self._store, self._settings)
        return await register_file(
            self._store,
            self._settings,
            name,
            path,
            file_format,
            datasource=datasource,
            link=link,
            column_types=column_types,
            actor=actor,
        )

    async def list(self) -> list[DomainData]:
        return [d for d in await self._store.list("DomainData") if isinstance(d, DomainData)]

    async def get(self, name: str) -> DomainData:
        return await get_data(self._store, name)

    async def head(self, name: str, rows: int = DEFAULT_HEAD_ROWS, *, actor: str = "user") -> DataHead:
        """The first `rows` rows (1..MAX_HEAD_ROWS) of a DomainData."""
        if not 1 <= rows <= MAX_HEAD_ROWS:
            raise InvalidArgument(
                f"rows must be between 1 and {MAX_HEAD_ROWS}, not {rows}", code=ErrorCode.DATA_INVALID
            )
        data = await get_data(self._store, name)
        _, source = await get_source(self._store, data.spec.datasource)
        names, values = await asyncio.to_thread(_first_rows, data, source, rows)
        await self._store.append_audit(
            AuditEntry(
                actor=actor,
                action="data.head",
                target_kind="DomainData",
                target_name=name,
                details={"rows": len(values)},
            )
        )
        described = {c.name: c for c in data.spec.columns}
        columns = [described.get(n, DataColumn(name=n)) for n in names]
        return DataHead(name=name, columns=columns, rows=values)
