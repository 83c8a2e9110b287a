"""Engine-side data access: read the task's inputs and write its outputs through the node's DataMesh.

An engine never opens a domain's files itself: it asks DataMesh (Arrow Flight on loopback) with its task
token, and DataMesh decides (inputs of this task only, grants, audit) and streams Arrow record batches.
This module is what engines import for that; like the rest of `accord.engines` it depends only on the
standard library and pyarrow, so an engine running from its own environment can use it.

Environment (set by the node's runtime when it starts the engine):

    ACCORD_DATAMESH     grpc+tcp://127.0.0.1:PORT   the node's DataMesh
    ACCORD_TASK_TOKEN   the task's one-time token, sent as `authorization: Bearer <token>`

    for batch in read_table("alice-table", columns=["id", "age"]):
        ...
    write_table("job-1-psi-output", table)            # -> "job-1-psi-output"

    with DataMeshClient() as dm, dm.open_output("out", schema) as output:   # held back until commit
        output.write(batch); ...
        output.commit()                                  # leaving without commit registers nothing

Wire protocol (must match `accord.datamesh.flight`): reads are `DoGet` with the JSON ticket
`{"type": "read", "domaindata_id", "columns"}`; writes are `DoPut` with the JSON command
`{"type": "write", "domaindata_id", "file_format", "comments", "attributes"}`, the batches, then the
metadata message `{"commit": true, "rows": N}`.  The commit message is what makes an output real: if the
engine dies or its producer raises before it, DataMesh registers nothing.

Errors are `DataMeshError` subclasses with the node's error code (`.code`) and its message:
`DataAccessDenied` (not an input of this task, no live grant), `DataNotFound`, `DataAlreadyExists`,
`InvalidData`, `DataMeshUnauthenticated` (bad or expired token) and `DataMeshUnreachable` (no node
listening; retryable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.flight as fl

ENV_DATAMESH = "ACCORD_DATAMESH"
ENV_TOKEN = "ACCORD_TASK_TOKEN"


class DataMeshError(Exception):
    """A DataMesh call failed; `code` is the node's error code (0 when the node sent none)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DataAccessDenied(DataMeshError):
    """The task may not read this data (not one of its inputs, no live grant) or may not write."""


class DataNotFound(DataMeshError):
    """No such DomainData (or data source)."""


class DataAlreadyExists(DataMeshError):
    """An output name that is already taken."""


class InvalidData(DataMeshError):
    """A malformed request: unknown column, unsupported format, bad name."""


class DataMeshUnauthenticated(DataMeshError):
    """The task token is missing, wrong, or its task has ended."""


class DataMeshUnreachable(DataMeshError):
    """No DataMesh answered at the given location (node down or stopping); retryable."""


_BY_CODE: dict[int, type[DataMeshError]] = {
    11102: DataMeshUnauthenticated,
    11106: DataAccessDenied,
    11703: DataAccessDenied,
    11107: DataNotFound,
    11501: DataNotFound,
    11801: DataNotFound,
    11108: DataAlreadyExists,
    11502: DataAlreadyExists,
    11100: InvalidData,
    11500: InvalidData,
    11800: InvalidData,
}


class DataMeshClient:
    """A connection to the node's DataMesh; `with DataMeshClient() as dm: dm.read_all("x")`."""

    def __init__(self, location: str | None = None, token: str | None = None) -> None:
        location = location or os.environ.get(ENV_DATAMESH, "")
        token = token if token is not None else os.environ.get(ENV_TOKEN, "")
        if not location:
            raise DataMeshError(
                f"{ENV_DATAMESH} is not set: run this engine as an Accord task "
                "(or set it to grpc+tcp://127.0.0.1:PORT, the node's datamesh port)"
            )
        if not token:
            raise DataMeshUnauthenticated(f"{ENV_TOKEN} is not set: run this engine as an Accord task")
        self.location = location
        self._client = fl.FlightClient(location)
        self._options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DataMeshClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------------------

    def schema(self, data_id: str, columns: Sequence[str] | None = None) -> Any:
        """The Arrow schema a read of these columns streams (checks access, spends no grant use)."""
        cmd = _read_command(data_id, columns)
        try:
            info = self._client.get_flight_info(fl.FlightDescriptor.for_command(cmd), self._options)
        except fl.FlightError as exc:
            self._raise(exc, f"reading the schema of {data_id!r}")
        return info.schema

    def read_batches(self, data_id: str, columns: Sequence[str] | None = None) -> Iterator[Any]:
        """Stream a DomainData's record batches (selected columns only).  Access is checked on the call."""
        try:
            reader = self._client.do_get(fl.Ticket(_read_command(data_id, columns)), self._options)
        except fl.FlightError as exc:
            self._raise(exc, f"reading {data_id!r}")
        return self._batches(reader, data_id)

    def _batches(self, reader: Any, data_id: str) -> Iterator[Any]:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            except fl.FlightError as exc:
                self._raise(exc, f"reading {data_id!r}")
            if chunk.data is not None:
                yield chunk.data

    def read_all(self, data_id: str, columns: Sequence[str] | None = None) -> Any:
        """A whole DomainData as one `pyarrow.Table` (fine for small data; stream large data)."""
        batches = list(self.read_batches(data_id, columns))
        if batches:
            return pa.Table.from_batches(batches)
        return self.schema(data_id, columns).empty_table()

    # -- writes ---------------------------------------------------------------------------------------

    def open_output(
        self,
        name: str,
        schema: Any,
        *,
        comments: Mapping[str, str] | None = None,
        attributes: Mapping[str, str] | None = None,
        file_format: str = "csv",
    ) -> OutputWriter:
        """Start writing output `name`: `write()` batches, then `commit()` (or `abort()`).

        Nothing is registered until `commit()`; used as a context manager, leaving the block without a
        commit (or with an exception) aborts.  Fits engines that must hold an output back until their
        protocol has finished (e.g. PSI's final round).
        """
        cmd = {
            "type": "write",
            "domaindata_id": name,
            "file_format": file_format,
            "comments": dict(comments or {}),
            "attributes": dict(attributes or {}),
        }
        descriptor = fl.FlightDescriptor.for_command(json.dumps(cmd).encode())
        try:
            writer, answers = self._client.do_put(descriptor, schema, self._options)
        except fl.FlightError as exc:
            self._raise(exc, f"writing {name!r}")
        return OutputWriter(self, name, writer, answers)

    def write(
        self,
        name: str,
        data: Any,
        *,
        schema: Any = None,
        comments: Mapping[str, str] | None = None,
        attributes: Mapping[str, str] | None = None,
        file_format: str = "csv",
    ) -> str:
        """Write an output DomainData `name`; returns its id once the node has registered it.

        `data` is a `pyarrow.Table`, a `RecordBatch`, a `RecordBatchReader` or an iterable of batches
        (then `schema` is needed if it may be empty).  If iterating `data` raises, nothing is registered
        and the exception propagates.
        """
        schema, batches = _schema_and_batches(data, schema)
        with self.open_output(
            name, schema, comments=comments, attributes=attributes, file_format=file_format
        ) as output:
            for batch in batches:
                output.write(batch)
            return output.commit()

    # -- errors ---------------------------------------------------------------------------------------

    def _raise(self, exc: Exception, doing: str) -> NoReturn:
        code, message = 0, ""
        info = getattr(exc, "extra_info", b"") or b""
        if info:
            try:
                body = json.loads(info.decode())
                code, message = int(body.get("code", 0)), str(body.get("message", ""))
            except (ValueError, AttributeError, TypeError):
                pass
        cls = _BY_CODE.get(code)
        if cls is None:
            if isinstance(exc, fl.FlightUnauthenticatedError):
                cls = DataMeshUnauthenticated
            elif isinstance(exc, fl.FlightUnauthorizedError):
                cls = DataAccessDenied
            elif isinstance(exc, fl.FlightUnavailableError | fl.FlightTimedOutError):
                cls = DataMeshUnreachable
            else:
                cls = DataMeshError
        if not message:
            if cls is DataMeshUnreachable:
                message = f"cannot reach DataMesh at {self.location} (is the node running?)"
            else:
                message = str(exc).split(". Detail:", 1)[0]
        raise cls(f"{doing}: {message}", code) from exc


class OutputWriter:
    """One output being written through DataMesh; see `DataMeshClient.open_output`."""

    def __init__(self, client: DataMeshClient, name: str, writer: Any, answers: Any) -> None:
        self.name = name
        self.rows = 0
        self._client = client
        self._writer = writer
        self._answers = answers
        self._done = False

    def write(self, data: Any) -> None:
        """Send a RecordBatch or a Table."""
        if self._done:
            raise DataMeshError(f"output {self.name!r} is already committed or aborted")
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        for batch in batches:
            try:
                self._writer.write_batch(batch)
            except pa.ArrowException as exc:  # the server refused (its status arrives with close)
                self._done = True
                self._client._raise(_final_status(self._writer, exc), f"writing {self.name!r}")
            self.rows += int(batch.num_rows)

    def commit(self) -> str:
        """Finish the output; returns its DomainData id once the node has registered it."""
        if self._done:
            raise DataMeshError(f"output {self.name!r} is already committed or aborted")
        self._done = True
        commit = json.dumps({"commit": True, "rows": self.rows}).encode()
        try:
            self._writer.write_metadata(pa.py_buffer(commit))
            self._writer.done_writing()
            answer = self._answers.read()
            self._writer.close()
        except pa.ArrowException as exc:
            self._client._raise(_final_status(self._writer, exc), f"writing {self.name!r}")
        try:
            result = json.loads(answer.to_pybytes().decode()) if answer is not None else {}
        except ValueError:
            result = {}
        return str(result.get("domaindata_id") or self.name)

    def abort(self) -> None:
        """Give up: DataMesh discards what it received and registers nothing (idempotent)."""
        if self._done:
            return
        self._done = True
        try:  # ending the stream without a commit message; the server's refusal is expected
            self._writer.done_writing()
            self._writer.close()
        except pa.ArrowException:
            pass

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _final_status(writer: Any, error: Exception) -> Exception:
    """The server's own error for a failed put (it carries the code), else the local one."""
    try:
        writer.close()
    except pa.ArrowException as closing:
        if getattr(closing, "extra_info", b""):
            server_error: Exception = closing
            return server_error
    return error


def _read_command(data_id: str, columns: Sequence[str] | None) -> bytes:
    if isinstance(columns, str):
        raise TypeError("columns must be a list of names, not one string")
    cmd = {
        "type": "read",
        "domaindata_id": data_id,
        "columns": list(columns) if columns is not None else None,
    }
    return json.dumps(cmd).encode()


def _schema_and_batches(data: Any, schema: Any) -> tuple[Any, Iterable[Any]]:
    if isinstance(data, pa.Table):
        return schema or data.schema, data.to_batches()
    if isinstance(data, pa.RecordBatch):
        return schema or data.schema, [data]
    if isinstance(data, pa.RecordBatchReader):
        return schema or data.schema, data
    iterator = iter(data)
    if schema is not None:
        return schema, iterator
    try:
        first = next(iterator)
    except StopIteration:
        raise InvalidData("no batches and no schema: pass schema= to write an empty output") from None

    def chained() -> Iterator[Any]:
        yield first
        yield from iterator

    return first.schema, chained()


def read_table(data_id: str, columns: Sequence[str] | None = None) -> Iterator[Any]:
    """Stream the record batches of a DomainData this task was given (selected columns only)."""
    client = DataMeshClient()
    try:
        batches = client.read_batches(data_id, columns)
    except BaseException:
        client.close()
        raise

    def stream() -> Iterator[Any]:
        try:
            yield from batches
        finally:
            client.close()

    return stream()


def read_all(data_id: str, columns: Sequence[str] | None = None) -> Any:
    """A whole DomainData as one `pyarrow.Table`."""
    with DataMeshClient() as client:
        return client.read_all(data_id, columns)


def write_table(
    name: str,
    data: Any,
    comments: Mapping[str, str] | None = None,
    *,
    schema: Any = None,
    attributes: Mapping[str, str] | None = None,
    file_format: str = "csv",
) -> str:
    """Write an output DomainData `name` (a Table, batches or a reader); returns its id."""
    with DataMeshClient() as client:
        return client.write(
            name, data, schema=schema, comments=comments, attributes=attributes, file_format=file_format
        )
