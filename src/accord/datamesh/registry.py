"""The DomainData registry: the default data source, registering files, registering task outputs.

Why here and not in a service: registration is needed by three callers with different front doors — the
API (`accord data add`), the Flight service (an engine's output) and node start-up (the default source)
— and all of them must apply the same rules:

- **A DomainData is registered only once its bytes are complete.**  Files are copied (or hard-linked)
  into the source atomically *before* the store object is created, and the copy is deleted when the
  create fails, so a DomainData never points at a half file and a failed registration leaves nothing.
- **Columns are inferred, with types, from the whole file** (see `columns.py`), and the file is parsed
  before it is copied, so a malformed file never enters the source.
- **Names never collide on disk.**  The file goes to `<name>.<ext>`; if that file exists (a leftover of
  an earlier object or a crash), `<name>-<random>.<ext>` is used instead.  Nothing is ever overwritten,
  so two registrations racing for one name cannot destroy each other's bytes: the store's create decides
  which wins and the loser deletes only its own copy.
- **Outputs carry lineage**: inputs, task and job, plus labels `accord/job` and `accord/task` so a job's
  outputs can be listed or cleaned up by selector.

Errors: unknown data source -> `NotFound` 11801; missing file -> `NotFound` 11501; unsupported format
or unparseable file -> `InvalidArgument` 11500; name taken -> `AlreadyExists` 11502.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from accord.datamesh.columns import arrow_type, columns_from_schema
from accord.datamesh.sources import (
    EXTENSIONS,
    DataSource,
    FileFormat,
    LocalFsSource,
    file_format_of,
    open_source,
)
from accord.errors import AlreadyExists, ErrorCode, InvalidArgument, NotFound
from accord.names import check_dns_label
from accord.resources.audit import AuditEntry
from accord.resources.data import (
    DataColumn,
    DomainData,
    DomainDataSource,
    DomainDataSourceSpec,
    DomainDataSourceStatus,
    DomainDataSpec,
    Lineage,
)
from accord.resources.meta import ObjectMeta
from accord.resources.phases import DataPhase
from accord.settings import NodeSettings
from accord.store.base import Store

DEFAULT_SOURCE = "default-data-source"
JOB_LABEL = "accord/job"
TASK_LABEL = "accord/task"
OUTPUT_VENDOR = "accord"


def check_data_name(name: str) -> str:
    try:
        return check_dns_label(name, "DomainData name")
    except ValueError as exc:
        raise InvalidArgument(str(exc), code=ErrorCode.DATA_INVALID) from exc


async def ensure_default_source(store: Store, settings: NodeSettings) -> DomainDataSource:
    """Create `default-data-source` (localfs at `settings.data_dir`) if missing; sweep crash leftovers.

    Idempotent; the node calls it at start, before the Flight service accepts writes.  An existing
    default source is kept as it is (an operator may have pointed it elsewhere).
    """
    try:
        existing = await store.get("DomainDataSource", DEFAULT_SOURCE)
    except NotFound:
        draft = DomainDataSource(
            meta=ObjectMeta(name=DEFAULT_SOURCE, domain=settings.domain),
            spec=DomainDataSourceSpec(
                type="localfs", name="default", info={"localfs": {"path": str(settings.data_dir)}}
            ),
            status=DomainDataSourceStatus(phase=DataPhase.AVAILABLE),
        )
        try:
            existing = await store.create(
                draft,
                audit=AuditEntry(
                    actor="node",
                    action="create",
                    target_kind="DomainDataSource",
                    target_name=DEFAULT_SOURCE,
                    details={"type": "localfs", "path": str(settings.data_dir)},
                ),
            )
        except AlreadyExists:  # created concurrently: use that one
            existing = await store.get("DomainDataSource", DEFAULT_SOURCE)
    if not isinstance(existing, DomainDataSource):  # pragma: no cover - the store returns typed objects
        raise InvalidArgument(
            f"{DEFAULT_SOURCE} is not a DomainDataSource", code=ErrorCode.DATASOURCE_INVALID
        )
    source = open_source(existing)
    if isinstance(source, LocalFsSource):
        await asyncio.to_thread(source.sweep_temporaries)
    return existing


async def get_source(store: Store, name: str) -> tuple[DomainDataSource, DataSource]:
    """The stored DomainDataSource and its backend; `NotFound` 11801 naming what exists."""
    try:
        obj = await store.get("DomainDataSource", name)
    except NotFound:
        known = [s.meta.name for s in await store.list("DomainDataSource")]
        raise NotFound(
            f"data source {name!r} does not exist (known: {', '.join(known) or 'none'})",
            code=ErrorCode.DATASOURCE_NOT_FOUND,
        ) from None
    assert isinstance(obj, DomainDataSource)
    return obj, open_source(obj)


async def get_data(store: Store, name: str) -> DomainData:
    """A DomainData by id; `NotFound` 11501."""
    obj = await store.get("DomainData", name)
    assert isinstance(obj, DomainData)
    return obj


async def _refuse_taken(store: Store, name: str) -> None:
    try:
        await store.get("DomainData", name)
    except NotFound:
        return
    raise AlreadyExists(
        f"DomainData {name!r} already exists: choose another name (or delete it first)",
        code=ErrorCode.DATA_EXISTS,
    )


def candidate_uri(name: str, file_format: FileFormat) -> str:
    return f"{name}.{EXTENSIONS[file_format]}"


def fallback_uri(name: str, file_format: FileFormat) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}.{EXTENSIONS[file_format]}"


def _infer_file(path: Path, file_format: FileFormat, column_types: Mapping[str, str]) -> Any:
    """Parse a local file once; returns its Arrow schema with the caller's type overrides applied."""
    outside = LocalFsSource(path.parent, name="file", create=False)
    schema = outside.infer_schema(path.name, file_format=file_format)
    if not column_types:
        return schema
    unknown = [c for c in column_types if c not in schema.names]
    if unknown:
        raise InvalidArgument(
            f"column types given for {unknown}, which are not in {path.name} (columns: {schema.names})",
            code=ErrorCode.DATA_INVALID,
        )
    schema = pa.schema(
        [f.with_type(arrow_type(column_types[f.name])) if f.name in column_types else f for f in schema]
    )
    reader = outside.open_reader(path.name, file_format=file_format, schema=schema)
    for _ in reader:  # every row must convert with the overridden types
        pass
    return schema


def _import(source: DataSource, path: Path, file_format: FileFormat, name: str, link: bool) -> str:
    for uri in (candidate_uri(name, file_format), fallback_uri(name, file_format)):
        try:
            source.import_file(path, uri, file_format=file_format, link=link)
            return uri
        except AlreadyExists:
            continue
    raise AlreadyExists(  # pragma: no cover - two random names taken in a row
        f"could not find a free file name for {name!r} in data source {source.name!r}",
        code=ErrorCode.DATA_EXISTS,
    )


async def register_file(
    store: Store,
    settings: NodeSettings,
    name: str,
    path: Path | str,
    file_format: str | None = None,
    *,
    datasource: str = DEFAULT_SOURCE,
    link: bool = False,
    column_types: Mapping[str, str] | None = None,
    comments: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
    actor: str = "user",
) -> DomainData:
    """Register a file on this machine as DomainData `name` (copied, or hard-linked with `link`)."""
    check_data_name(name)
    fmt = file_format_of(file_format, path)
    file = Path(path).expanduser()
    if not file.is_absolute():
        raise InvalidArgument(
            f"path {str(path)!r} must be absolute (the node resolves it on its own machine)",
            code=ErrorCode.DATA_INVALID,
        )
    if not file.is_file():
        raise NotFound(
            f"file {str(file)!r} does not exist on the node's machine (or is not a regular file)",
            code=ErrorCode.DATA_NOT_FOUND,
        )
    await _refuse_taken(store, name)
    _, source = await get_source(store, datasource)
    schema = await asyncio.to_thread(_infer_file, file, fmt, dict(column_types or {}))
    relative_uri = await asyncio.to_thread(_import, source, file, fmt, name, link)
    draft = DomainData(
        meta=ObjectMeta(name=name, domain=settings.domain),
        spec=DomainDataSpec(
            name=name,
            relative_uri=relative_uri,
            datasource=datasource,
            author=settings.domain,
            vendor="manual",
            file_format=fmt,
            attributes=dict(attributes or {}),
            columns=columns_from_schema(schema, comments),
        ),
    )
    audit = AuditEntry(
        actor=actor,
        action="data.register",
        target_kind="DomainData",
        target_name=name,
        details={"datasource": datasource, "relative_uri": relative_uri, "format": fmt, "file": str(file)},
    )
    return await _create_or_discard(store, draft, source, relative_uri, audit)


async def register_output(
    store: Store,
    settings: NodeSettings,
    *,
    name: str,
    relative_uri: str,
    file_format: FileFormat,
    columns: Iterable[DataColumn],
    inputs: Iterable[str],
    task: str,
    job: str,
    datasource: str = DEFAULT_SOURCE,
    attributes: Mapping[str, str] | None = None,
    rows: int | None = None,
) -> DomainData:
    """Register a task's output, already written completely at `relative_uri`, with its lineage.

    If the create fails (e.g. the name was taken meanwhile) the written file is deleted, so a failed
    output leaves nothing behind.
    """
    check_data_name(name)
    _, source = await get_source(store, datasource)
    attrs = dict(attributes or {})
    if rows is not None:
        attrs.setdefault("rows", str(rows))
    labels = {k: v for k, v in ((JOB_LABEL, job), (TASK_LABEL, task)) if v}
    lineage = Lineage(inputs=sorted(set(inputs)), task=task, job=job)
    draft = DomainData(
        meta=ObjectMeta(name=name, domain=settings.domain, labels=labels),
        spec=DomainDataSpec(
            name=name,
            relative_uri=relative_uri,
            datasource=datasource,
            author=settings.domain,
            vendor=OUTPUT_VENDOR,
            file_format=file_format,
            attributes=attrs,
            columns=list(columns),
            lineage=lineage,
        ),
    )
    audit = AuditEntry(
        actor=f"task/{task}" if task else "node",
        action="data.write",
        target_kind="DomainData",
        target_name=name,
        details={
            "relative_uri": relative_uri,
            "inputs": lineage.inputs,
            "task": task,
            "job": job,
            "rows": rows,
        },
    )
    return await _create_or_discard(store, draft, source, relative_uri, audit)


async def _create_or_discard(
    store: Store, draft: DomainData, source: DataSource, relative_uri: str, audit: AuditEntry
) -> DomainData:
    try:
        created = await store.create(draft, audit=audit)
    except BaseException as exc:
        # Synchronous on purpose: this path also runs when the caller is being cancelled, where a
        # further await could be interrupted and leave the file behind.
        source.delete(relative_uri)
        if isinstance(exc, AlreadyExists):
            raise AlreadyExists(
                f"DomainData {draft.meta.name!r} already exists: choose another name",
                code=ErrorCode.DATA_EXISTS,
            ) from exc
        raise
    assert isinstance(created, DomainData)
    return created
