"""The DataMesh Arrow Flight service: the only door through which an engine reads or writes data.

Engines (separate processes) connect to `grpc+tcp://127.0.0.1:<datamesh_port>` (env `ACCORD_DATAMESH`)
and authenticate every call with their task token (`authorization: Bearer <ACCORD_TASK_TOKEN>`).  The
server binds loopback only.

**Who may do what.**  A middleware resolves the token on every call through the injected
`resolve_token(token) -> TaskGrant | None` (the node wires it to the Task objects and their one-time
token hashes); an unknown token is refused before any handler runs.  A task may read only the DomainData
in its `TaskGrant.inputs`, and each read also passes `grants.authorize_read` (owner or a live grant,
use counted, audited).  A task may write only when `outputs_allowed` (and, when `outputs` is set, only
those names); a write creates a *new* DomainData (never replaces one) with lineage (the task's inputs,
task, job) in the default data source.

**Wire surface** (Kuscia-compatible in shape; commands are JSON rather than protobuf `Any`, see
`wire.py`):

- Read: `GetFlightInfo(descriptor.cmd = {"type": "read", "domaindata_id": ID, "columns": [..]})` answers
  the selected columns' schema and one endpoint with no location (= reuse this connection, Kuscia's
  `kuscia://datamesh`) whose ticket is the same command; `DoGet(ticket)` streams the record batches.  A
  client may call `DoGet` with the command directly.  `"type"` also accepts Kuscia's names
  (`CommandDomainDataQuery`, `CommandDomainDataUpdate`).
- Write: `DoPut(descriptor.cmd = {"type": "write", "domaindata_id": NAME, "file_format": "csv" |
  "parquet", "comments": {col: text}, "attributes": {..}})` (or the ticket `GetFlightInfo` returns for
  that command), then the batches, then a metadata-only message `{"commit": true, "rows": N}`.  The
  server answers one metadata message `{"domaindata_id", "rows", "relative_uri"}` once registered.
- `ListFlights` lists the task's inputs.

**Never a partial output.**  Batches stream into the data source's temporary file; the output is
linked into place and registered only after the explicit commit message arrived, the row count matches
and the call was not cancelled.  A killed engine's stream simply ends (gRPC reports it as a normal end
plus a cancelled context), so without the commit marker a crash mid-write would look complete; with it,
the temporary is deleted and nothing is registered.

**Threads and the event loop.**  pyarrow's Flight server runs handlers on gRPC's own threads, while
the store (and everything asyncio-bound in it: locks, the SQL engine) lives on the node's event loop.
So:
- blocking data I/O (reading CSV/Parquet, writing files) runs *in the gRPC thread*, never on the loop;
- every store call is a coroutine submitted to the node's loop with `asyncio.run_coroutine_threadsafe`
  and awaited from the gRPC thread with a timeout (`bridge_timeout`); a stopped loop or a timeout
  becomes `Unavailable` for the client rather than a hung call;
- the loop never waits on a gRPC thread: `shutdown()` (which blocks until in-flight calls finish, and
  those may be waiting on the loop) runs in a separate daemon thread that the loop awaits without
  blocking, bounded by `SHUTDOWN_TIMEOUT_SECONDS`.

Errors cross the wire as Flight errors whose `extra_info` is `{"code", "message"}` (the AccordError
catalog): Unauthenticated -> FlightUnauthenticatedError, PermissionDenied -> FlightUnauthorizedError,
Unavailable -> FlightUnavailableError, others -> FlightServerError.  Unexpected exceptions are logged
here and answered with a generic FlightInternalError (no tracebacks or paths leak to engines).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as fl

from accord.datamesh.columns import columns_from_schema, schema_from_columns
from accord.datamesh.grants import authorize_read
from accord.datamesh.registry import (
    DEFAULT_SOURCE,
    candidate_uri,
    check_data_name,
    fallback_uri,
    get_data,
    get_source,
    register_output,
)
from accord.datamesh.sources import DataSource, FileFormat, file_format_of
from accord.datamesh.wire import (
    READ_TYPES,
    WRITE_TYPES,
    Aborted,
    TaskGrant,
    TokenResolver,
    bearer_token,
    commit_message,
    parse_command,
    to_flight_error,
)
from accord.errors import (
    AccordError,
    AlreadyExists,
    ErrorCode,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from accord.resources.data import DomainData
from accord.settings import NodeSettings
from accord.store.base import Store

__all__ = ["BRIDGE_TIMEOUT_SECONDS", "DataMeshService", "TaskGrant", "TokenResolver"]

log = logging.getLogger("accord.datamesh")

T = TypeVar("T")

BRIDGE_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0


class _TaskMiddleware(fl.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, grant: TaskGrant) -> None:
        super().__init__()
        self.grant = grant


class _AuthFactory(fl.ServerMiddlewareFactory):  # type: ignore[misc]
    def __init__(self, service: DataMeshService) -> None:
        super().__init__()
        self._service = service

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> _TaskMiddleware:
        token = bearer_token(headers)
        if not token:
            raise to_flight_error(
                Unauthenticated("missing task token: send 'authorization: Bearer <ACCORD_TASK_TOKEN>'")
            )
        try:
            grant = self._service.bridge(self._service.resolve_token(token))
        except AccordError as exc:
            raise to_flight_error(exc) from None
        except Exception:
            log.exception("resolving a task token failed")
            raise fl.FlightInternalError(
                "internal error in DataMesh; the node's log has the details"
            ) from None
        if grant is None:
            raise to_flight_error(Unauthenticated("the task token is not valid (unknown, or its task ended)"))
        return _TaskMiddleware(grant)


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn AccordErrors into Flight errors and unexpected failures into a logged generic error."""

    def wrapper(self: _FlightServer, context: Any, *args: Any) -> T:
        try:
            return method(self, context, *args)
        except fl.FlightError:
            raise
        except AccordError as exc:
            raise to_flight_error(exc) from None
        except Exception:
            log.exception("DataMesh %s failed", method.__name__)
            raise fl.FlightInternalError(
                "internal error in DataMesh; the node's log has the details"
            ) from None

    wrapper.__name__ = method.__name__
    return wrapper


class _FlightServer(fl.FlightServerBase):  # type: ignore[misc]
    def __init__(self, location: str, service: DataMeshService) -> None:
        super().__init__(location, middleware={"task": _AuthFactory(service)})
        self._service = service

    @staticmethod
    def _grant(context: Any) -> TaskGrant:
        middleware = context.get_middleware("task")
        if middleware is None:  # pragma: no cover - the factory refuses calls without a token
            raise Unauthenticated("no task token")
        grant: TaskGrant = middleware.grant
        return grant

    @_guarded
    def get_flight_info(self, context: Any, descriptor: Any) -> Any:
        grant = self._grant(context)
        cmd = parse_command(descriptor.command or b"", READ_TYPES | WRITE_TYPES)
        if cmd.get("type", "read") in WRITE_TYPES:
            self._service.check_write(grant, cmd)
            ticket = json.dumps({**cmd, "type": "write"}).encode()
            return fl.FlightInfo(pa.schema([]), descriptor, [fl.FlightEndpoint(ticket, [])], -1, -1)
        data, schema = self._service.schema_of(grant, cmd)
        read = {"type": "read", "domaindata_id": data.meta.name, "columns": cmd.get("columns")}
        endpoint = fl.FlightEndpoint(json.dumps(read).encode(), [])
        return fl.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    @_guarded
    def do_get(self, context: Any, ticket: Any) -> Any:
        grant = self._grant(context)
        cmd = parse_command(ticket.ticket, READ_TYPES)
        reader = self._service.open_read(grant, cmd)
        return fl.RecordBatchStream(reader)

    @_guarded
    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        grant = self._grant(context)
        cmd = parse_command(descriptor.command or b"", WRITE_TYPES)
        result = self._service.write(grant, cmd, reader, context)
        writer.write(pa.py_buffer(json.dumps(result).encode()))

    @_guarded
    def list_flights(self, context: Any, criteria: Any) -> Iterator[Any]:
        grant = self._grant(context)
        infos = []
        for data_id in sorted(grant.inputs):
            try:
                data = self._service.bridge(get_data(self._service.store, data_id))
            except NotFound:
                continue
            cmd = json.dumps({"type": "read", "domaindata_id": data_id}).encode()
            schema = self._service.reader_for(data, {"domaindata_id": data_id}).schema
            infos.append(
                fl.FlightInfo(
                    schema, fl.FlightDescriptor.for_command(cmd), [fl.FlightEndpoint(cmd, [])], -1, -1
                )
            )
        return iter(infos)


class DataMeshService:
    """The Flight server as a node module: `await run()` until `request_stop()` / `shutdown()`."""

    name = "datamesh"

    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        resolve_token: TokenResolver,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        bridge_timeout: float = BRIDGE_TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.resolve_token = resolve_token
        self.ready = asyncio.Event()
        self._host = host
        self._wanted_port = settings.datamesh_port if port is None else port
        self._bridge_timeout = bridge_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _FlightServer | None = None
        self._port = 0
        self._stop = asyncio.Event()
        self._stopped = False
        self._counts_lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # reads, writes, writes_aborted: for metrics and tests

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    # -- lifecycle (event-loop side) ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after `start()`)."""
        if not self._port:
            raise Unavailable("the DataMesh Flight service has not started")
        return self._port

    @property
    def location(self) -> str:
        """What engines get as `ACCORD_DATAMESH`."""
        return f"grpc+tcp://{self._host}:{self.port}"

    async def start(self) -> int:
        """Bind and start serving (idempotent); returns the port.  `OSError` when the port is taken."""
        if self._server is not None:
            return self._port
        self._loop = asyncio.get_running_loop()
        if self._wanted_port:
            _check_port_free(self._host, self._wanted_port)
        try:
            self._server = _FlightServer(f"grpc://{self._host}:{self._wanted_port}", self)
        except Exception as exc:
            raise OSError(
                f"cannot listen on {self._host}:{self._wanted_port} for DataMesh (Arrow Flight): {exc}"
            ) from exc
        self._port = int(self._server.port)
        log.info("DataMesh Flight service listening on %s", self.location)
        return self._port

    async def run(self) -> None:
        await self.start()
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop accepting calls and wait (bounded) for in-flight ones; idempotent."""
        self._stop.set()
        server, self._server = self._server, None
        if server is None or self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def stop() -> None:
            try:
                server.shutdown()
            except Exception:  # pragma: no cover - nothing the node can do about it
                log.exception("DataMesh Flight server shutdown failed")
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be gone already
                    loop.call_soon_threadsafe(_resolve, finished)

        threading.Thread(target=stop, name="datamesh-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(finished), SHUTDOWN_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("DataMesh calls still running after %.0f s; leaving them", SHUTDOWN_TIMEOUT_SECONDS)

    # -- the bridge (gRPC-thread side) ----------------------------------------------------------------

    def bridge(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine on the node's loop from a gRPC thread and wait for it (bounded)."""
        coro = _as_coroutine(awaitable)
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise Unavailable("the node is stopping; retry the call")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            raise Unavailable("the node is stopping; retry the call") from None
        try:
            return future.result(timeout=self._bridge_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"the node did not answer within {self._bridge_timeout:g} s; retry") from None
        except concurrent.futures.CancelledError:
            raise Unavailable("the node is stopping; retry the call") from None

    # -- reads ----------------------------------------------------------------------------------------

    def plan_read(self, grant: TaskGrant, cmd: dict[str, Any], *, consume: bool) -> DomainData:
        """Check a read (and with `consume`, spend the use and audit it); returns the data."""
        data_id: str = cmd["domaindata_id"]
        if data_id not in grant.inputs:
            raise PermissionDenied(
                f"task {grant.task!r} was not given DomainData {data_id!r} as an input "
                f"(its inputs: {', '.join(sorted(grant.inputs)) or 'none'})",
                code=ErrorCode.GRANT_DENIED,
            )
        columns: list[str] | None = cmd.get("columns")
        data = self.bridge(get_data(self.store, data_id))
        self.bridge(
            authorize_read(
                self.store,
                domain_data=data,
                requester_domain=grant.domain,
                task=grant.task,
                job=grant.job,
                app=grant.app,
                columns=columns,
                grant=grant.grants.get(data_id),
                local_domain=self.settings.domain,
                consume=consume,
            )
        )
        return data

    def schema_of(self, grant: TaskGrant, cmd: dict[str, Any]) -> tuple[DomainData, Any]:
        """Check a read without spending a use; returns the data and the schema a read would stream."""
        data = self.plan_read(grant, cmd, consume=False)
        return data, self.reader_for(data, cmd).schema

    def open_read(self, grant: TaskGrant, cmd: dict[str, Any]) -> Any:
        """Authorise (spending a use) and open the reader of the selected columns."""
        reader = self.reader_for(self.plan_read(grant, cmd, consume=True), cmd)
        self._count("reads")
        return reader

    def reader_for(self, data: DomainData, cmd: dict[str, Any]) -> Any:
        _, source = self.bridge(get_source(self.store, data.spec.datasource))
        if data.spec.file_format not in ("CSV", "PARQUET"):
            raise InvalidArgument(
                f"DomainData {data.meta.name!r} is {data.spec.file_format}, which DataMesh cannot stream",
                code=ErrorCode.DATA_INVALID,
            )
        file_format: FileFormat = "PARQUET" if data.spec.file_format == "PARQUET" else "CSV"
        csv_types = file_format == "CSV" and data.spec.columns
        return source.open_reader(
            data.spec.relative_uri,
            file_format=file_format,
            columns=cmd.get("columns"),
            schema=schema_from_columns(data.spec.columns) if csv_types else None,
        )

    # -- writes ---------------------------------------------------------------------------------------

    def check_write(self, grant: TaskGrant, cmd: dict[str, Any]) -> str:
        if not grant.outputs_allowed:
            raise PermissionDenied(
                f"task {grant.task!r} may not write outputs", code=ErrorCode.PERMISSION_DENIED
            )
        name = check_data_name(cmd["domaindata_id"])
        if grant.outputs and name not in grant.outputs:
            raise PermissionDenied(
                f"task {grant.task!r} may write only {', '.join(sorted(grant.outputs))}, not {name!r}",
                code=ErrorCode.PERMISSION_DENIED,
            )
        file_format_of(cmd.get("file_format") or "csv")
        try:
            self.bridge(get_data(self.store, name))
        except NotFound:
            return name
        raise AlreadyExists(
            f"DomainData {name!r} already exists: outputs need a new name", code=ErrorCode.DATA_EXISTS
        )

    def write(self, grant: TaskGrant, cmd: dict[str, Any], reader: Any, context: Any) -> dict[str, Any]:
        name = self.check_write(grant, cmd)
        file_format = file_format_of(cmd.get("file_format") or "csv")
        comments = cmd.get("comments") or {}
        attributes = cmd.get("attributes") or {}
        if not isinstance(comments, dict) or not isinstance(attributes, dict):
            raise InvalidArgument("'comments' and 'attributes' must be objects", code=ErrorCode.DATA_INVALID)
        _, source = self.bridge(get_source(self.store, DEFAULT_SOURCE))
        schema = reader.schema
        relative_uri, rows = self._write_file(source, name, file_format, schema, reader, context)
        try:
            created = self.bridge(
                register_output(
                    self.store,
                    self.settings,
                    name=name,
                    relative_uri=relative_uri,
                    file_format=file_format,
                    columns=columns_from_schema(schema, {str(k): str(v) for k, v in comments.items()}),
                    inputs=grant.inputs,
                    task=grant.task,
                    job=grant.job,
                    attributes={str(k): str(v) for k, v in attributes.items()},
                    rows=rows,
                )
            )
        except Unavailable:
            # The registration may never have run (or was cancelled, which deletes the file itself);
            # make sure no unregistered file stays behind.
            with contextlib.suppress(Exception):
                if not self._registered(name):
                    source.delete(relative_uri)
            raise
        self._count("writes")
        log.info("task %s wrote DomainData %s (%d rows)", grant.task, name, rows)
        return {"domaindata_id": created.meta.name, "rows": rows, "relative_uri": relative_uri}

    def _registered(self, name: str) -> bool:
        try:
            self.bridge(get_data(self.store, name))
        except NotFound:
            return False
        return True

    def _write_file(
        self, source: DataSource, name: str, file_format: FileFormat, schema: Any, reader: Any, context: Any
    ) -> tuple[str, int]:
        counted = 0
        started = False

        def committed_batches() -> Iterator[Any]:
            nonlocal counted, started
            started = True
            commit: dict[str, Any] | None = None
            for chunk in reader:
                if commit is not None:
                    raise InvalidArgument(
                        "data arrived after the commit message", code=ErrorCode.DATA_INVALID
                    )
                if chunk.app_metadata is not None:
                    commit = commit_message(chunk.app_metadata.to_pybytes())
                if chunk.data is not None:
                    counted += int(chunk.data.num_rows)
                    yield chunk.data
            if commit is None or context.is_cancelled():
                raise Aborted(
                    f"the write of {name!r} ended without its commit message (the writer stopped or died); "
                    "nothing was registered",
                    code=ErrorCode.DATA_INVALID,
                )
            expected = commit.get("rows")
            if expected is not None and expected != counted:
                raise Aborted(
                    f"the write of {name!r} announced {expected} rows but {counted} arrived; nothing was "
                    "registered",
                    code=ErrorCode.DATA_INVALID,
                )

        for uri in (candidate_uri(name, file_format), fallback_uri(name, file_format)):
            try:
                result = source.write(uri, committed_batches(), schema=schema, file_format=file_format)
            except AlreadyExists:
                if started:  # the stream was consumed; it cannot be replayed
                    raise
                continue
            except Aborted as exc:
                self._count("writes_aborted")
                log.info("%s", exc.message)
                raise
            return result.relative_uri, result.rows
        raise AlreadyExists(  # pragma: no cover
            f"no free file name for {name!r} in the default data source", code=ErrorCode.DATA_EXISTS
        )


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _as_coroutine(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    return awaitable if isinstance(awaitable, Coroutine) else _await(awaitable)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT and would share a taken port silently; a plain bind tells.

    SO_REUSEADDR (as every listener sets) so that connections of a killed node still in TIME_WAIT do not
    count as "in use": only another listening socket does."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {host}:{port} for DataMesh (Arrow Flight): {exc.strerror}"
            ) from exc
