"""Table input and output behind two small interfaces, with local CSV and Parquet implementations.

The PSI protocol never touches files: it asks a `TableReader` for record batches and hands the result
to a `TableWriter`.  Under a node the data comes from DataMesh (Arrow Flight on loopback,
token-authenticated; `datamesh.py`); tests, benchmarks and runs without a node use the local files
here.  Both are implementations of the same two protocols:

- `TableReader.schema()` must be cheap (a Flight `GetFlightInfo` / a file header) because the engine
  checks its key columns *before* any network traffic;
- `TableReader.iter_batches(columns, batch_rows)` streams `pyarrow.RecordBatch`es (a Flight `DoGet`);
  the engine reads its table exactly once (a DataMesh read may consume a grant use);
- `TableWriter.write(batch)` streams output (a Flight `DoPut`); nothing is visible until `commit()`
  (rename a temp file / register the DomainData), and `abort()` discards everything, so a failed task
  never leaves a partial output behind.

CSV is read with every column as text: the engine copies a receiver's rows through unchanged (leading
zeros, "1.50" and the like survive), and keys compare by the text both parties see in their files.
Parquet columns keep their types; key columns are turned into their canonical text for hashing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from accord.engines.psi.errors import InputError

FileFormat = Literal["csv", "parquet"]
CSV_BLOCK_BYTES = 4 << 20
PARSE = pa_csv.ParseOptions(newlines_in_values=True)  # quoted cells may hold line breaks


class TableReader(Protocol):
    """A table to read once, batch by batch."""

    @property
    def description(self) -> str:
        """Where the table lives, for messages (e.g. "file /data/a.csv", "DomainData d-123")."""
        ...

    def schema(self) -> Any:
        """The `pyarrow.Schema` of the batches `iter_batches(None)` yields, without reading rows."""
        ...

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[Any]:
        """`pyarrow.RecordBatch`es of the selected columns (all when None), in table order."""
        ...


class TableWriter(Protocol):
    """An output table, invisible until committed."""

    def write(self, batch: Any) -> None:
        """Append a `pyarrow.RecordBatch` or `pyarrow.Table` with the writer's schema."""
        ...

    def commit(self) -> str:
        """Publish the output atomically; returns where it lives (a path or a DomainData id)."""
        ...

    def abort(self) -> None:
        """Discard everything written; safe to call after commit (then it does nothing)."""
        ...


def detect_format(path: str, explicit: FileFormat | None = None) -> FileFormat:
    if explicit is not None:
        return explicit
    return "parquet" if path.lower().endswith((".parquet", ".pq")) else "csv"


class CsvTableReader:
    """A local CSV file with a header row; every column is read as text."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._names: list[str] | None = None

    @property
    def description(self) -> str:
        return f"file {self.path}"

    def schema(self) -> Any:
        return pa.schema([(name, pa.string()) for name in self._column_names()])

    def _column_names(self) -> list[str]:
        if self._names is None:
            if not self.path.is_file():
                raise InputError(f"{self.description} does not exist")
            if self.path.stat().st_size == 0:
                raise InputError(f"{self.description} is empty (a CSV input needs a header row)")
            try:
                reader = pa_csv.open_csv(
                    str(self.path), read_options=pa_csv.ReadOptions(block_size=1 << 16), parse_options=PARSE
                )
                self._names = [str(name) for name in reader.schema.names]
                reader.close()
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"cannot read {self.description}: {exc}") from exc
        return list(self._names)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[Any]:
        names = self._column_names()
        convert = pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            include_columns=list(columns) if columns is not None else None,
            strings_can_be_null=False,
        )
        try:
            reader = pa_csv.open_csv(
                str(self.path),
                read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=PARSE,
                convert_options=convert,
            )
            for batch in reader:
                yield from split_batch(batch, batch_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {self.description}: {exc}") from exc


class ParquetTableReader:
    """A local Parquet file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: Any = None

    @property
    def description(self) -> str:
        return f"file {self.path}"

    def _open(self) -> Any:
        if self._file is None:
            if not self.path.is_file():
                raise InputError(f"{self.description} does not exist")
            try:
                self._file = pq.ParquetFile(str(self.path))
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"cannot read {self.description}: {exc}") from exc
        return self._file

    def schema(self) -> Any:
        return self._open().schema_arrow

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[Any]:
        file = self._open()
        try:
            yield from file.iter_batches(
                batch_size=batch_rows, columns=list(columns) if columns is not None else None
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {self.description}: {exc}") from exc


def split_batch(batch: Any, rows: int) -> Iterator[Any]:
    """`batch` in slices of at most `rows` rows (zero-copy)."""
    if batch.num_rows <= rows:
        yield batch
        return
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def open_file_reader(path: str, fmt: FileFormat | None = None) -> TableReader:
    if detect_format(path, fmt) == "parquet":
        return ParquetTableReader(path)
    return CsvTableReader(path)


class _TempFileWriter:
    """Writes to a hidden temp file next to the target; commit renames it into place."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._done = False

    def _close_writer(self) -> None:
        raise NotImplementedError

    def commit(self) -> str:
        self._close_writer()
        os.replace(self._tmp, self.path)
        self._done = True
        return str(self.path)

    def abort(self) -> None:
        if self._done:
            return
        try:
            self._close_writer()
        finally:
            self._tmp.unlink(missing_ok=True)
            self._done = True


class CsvTableWriter(_TempFileWriter):
    """A local CSV file with a header row."""

    def __init__(self, path: str | os.PathLike[str], schema: Any) -> None:
        super().__init__(path)
        self._writer: Any = pa_csv.CSVWriter(str(self._tmp), schema)

    def write(self, batch: Any) -> None:
        self._writer.write(batch)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ParquetTableWriter(_TempFileWriter):
    """A local Parquet file."""

    def __init__(self, path: str | os.PathLike[str], schema: Any) -> None:
        super().__init__(path)
        self._writer: Any = pq.ParquetWriter(str(self._tmp), schema)

    def write(self, batch: Any) -> None:
        if isinstance(batch, pa.RecordBatch):
            self._writer.write_batch(batch)
        else:
            self._writer.write_table(batch)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_file_writer(path: str, schema: Any, fmt: FileFormat | None = None) -> TableWriter:
    if detect_format(path, fmt) == "parquet":
        return ParquetTableWriter(path, schema)
    return CsvTableWriter(path, schema)
