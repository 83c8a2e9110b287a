"""The DataMesh backend of `io.TableReader` / `io.TableWriter`, over `accord.engines.dataio`.

Under a node the engine never opens files: it reads its input DomainData through the node's DataMesh
(Arrow Flight on loopback, authenticated with the task token; DataMesh checks that the task was given
that data, counts a grant use and audits the read) and writes its output as a new DomainData, which
DataMesh registers with lineage only when the writer commits.

How the PSI engine uses it:
- `schema()` is DataMesh's `GetFlightInfo` (once per reader): it checks access but spends no grant
  use, so a missing key column is still found before any network traffic to the peer;
- the table is streamed once (`DoGet`), i.e. one grant use per task;
- the output `<task id>-output` is streamed (`DoPut`) before the final round and committed after it;
  if anything fails first, the stream is abandoned without its commit marker and nothing is registered.

DataMesh failures map onto the engine's errors: access, existence and format problems are the party's
input problem (`InputError`, naming the field); an unreachable DataMesh or a bad token is an internal
failure of the node, not of the user's config.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from accord.engines.dataio import (
    DataAccessDenied,
    DataAlreadyExists,
    DataMeshClient,
    DataMeshError,
    DataNotFound,
    InvalidData,
    OutputWriter,
)
from accord.engines.psi.errors import InputError, PsiError
from accord.engines.psi.io import split_batch


def _mapped(exc: DataMeshError, field: str) -> PsiError:
    if isinstance(exc, DataAccessDenied | DataNotFound | InvalidData | DataAlreadyExists):
        return InputError(f"{field}: {exc.message}")
    return PsiError(f"DataMesh: {exc.message}")


def connect(location: str, token: str) -> DataMeshClient:
    try:
        return DataMeshClient(location, token)
    except DataMeshError as exc:
        raise PsiError(f"DataMesh: {exc.message}") from exc


class DataMeshTableReader:
    """A DomainData this task was given, read through DataMesh."""

    def __init__(self, client: DataMeshClient, data_id: str, *, field: str) -> None:
        self._client = client
        self.data_id = data_id
        self._field = field  # e.g. "inputs.alice.data", for messages
        self._schema: Any = None

    @property
    def description(self) -> str:
        return f"DomainData {self.data_id!r}"

    def schema(self) -> Any:
        """Asked once (a round trip through the node), then remembered: the key check and the read
        both need it."""
        if self._schema is None:
            try:
                self._schema = self._client.schema(self.data_id)
            except DataMeshError as exc:
                raise _mapped(exc, self._field) from exc
        return self._schema

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[Any]:
        try:
            for batch in self._client.read_batches(self.data_id, columns):
                yield from split_batch(batch, batch_rows)
        except DataMeshError as exc:
            raise _mapped(exc, self._field) from exc


class DataMeshTableWriter:
    """A new DomainData written through DataMesh; registered only by `commit()`."""

    def __init__(self, client: DataMeshClient, name: str, schema: Any, *, attributes: dict[str, str]) -> None:
        self.name = name
        try:
            self._output: OutputWriter = client.open_output(
                name, schema, file_format="csv", attributes=attributes
            )
        except DataMeshError as exc:
            raise _mapped(exc, f"output {name!r}") from exc

    def write(self, batch: Any) -> None:
        try:
            self._output.write(batch)
        except DataMeshError as exc:
            raise _mapped(exc, f"output {self.name!r}") from exc

    def commit(self) -> str:
        try:
            return self._output.commit()
        except DataMeshError as exc:
            raise _mapped(exc, f"output {self.name!r}") from exc

    def abort(self) -> None:
        self._output.abort()
