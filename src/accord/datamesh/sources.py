"""Data sources: where a domain's bytes live, behind one `DataSource` protocol (localfs first).

Why a protocol: DataMesh serves every read and write an engine makes, whatever holds the data (a local
directory today; S3, MySQL and PostgreSQL in later issues).  Each backend implements the same few
operations and passes the same contract suite (`tests/contract/test_datasource_contract.py`), so the
Flight service, the registry and the grant checks never know which backend they talk to.

The operations, all **blocking** (Arrow's file and network I/O is synchronous): node-side callers use
`asyncio.to_thread`, the Flight service calls them from its own gRPC threads.

- `open_reader(uri, file_format=, columns=, schema=)` -> a `pyarrow.RecordBatchReader` that streams the
  selected columns only, in the order asked, with the *registered* column types (`schema`) so every read
  of a table sees the same types (see `columns.py`).
- `write(uri, batches, schema=, file_format=)` is **atomic**: batches stream into a hidden temporary file
  next to the target, which is fsynced and then linked into place; a failure or an aborted stream
  deletes the temporary and leaves no output, and a crash leaves only a `.<name>.tmp-*` file that
  `LocalFsSource.sweep_temporaries` removes at node start.  Without `overwrite` an existing target is
  never replaced (`os.link` refuses atomically), so two writers cannot clobber each other.
- `import_file(path, uri, link=)` brings a local file in (copy, or a hard link when asked and possible)
  with the same no-clobber atomicity; `infer_schema`, `exists`, `delete`.

**Confinement.**  A localfs source serves only files under its root: a relative URI that is absolute,
contains `..`, or resolves (through symlinks) outside the root is refused with `InvalidArgument` (11500)
before any file is touched, so a DomainData can never name `/etc/passwd`.  Symlinks are never created by
DataMesh (imports copy or hard-link), so a registered file cannot later be redirected.

Backends are looked up by `DomainDataSource.spec.type` in `SOURCE_TYPES`; a later issue adds `s3` etc.
by registering a factory there.  An unsupported or misconfigured source is `InvalidArgument` with the
data-source code (11800), an unknown one `NotFound` (11801, raised by the registry).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from accord.errors import AlreadyExists, ErrorCode, InvalidArgument, NotFound
from accord.resources.data import DomainDataSource

FileFormat = Literal["CSV", "PARQUET"]
FORMATS: tuple[FileFormat, ...] = ("CSV", "PARQUET")
EXTENSIONS: dict[str, str] = {"CSV": "csv", "PARQUET": "parquet"}
_SUFFIXES: dict[str, FileFormat] = {".csv": "CSV", ".parquet": "PARQUET", ".pq": "PARQUET"}

CSV_BLOCK_BYTES = 4 * 1024 * 1024  # Arrow's CSV block: ~4 MiB of text per batch
PARQUET_BATCH_ROWS = 64 * 1024
TEMP_MARKER = ".tmp-"


def file_format_of(value: str | None, path: str | os.PathLike[str] | None = None) -> FileFormat:
    """`csv`/`parquet` (any case), or the format a file name's suffix implies; `InvalidArgument` otherwise."""
    if value:
        upper = value.strip().upper()
        if upper in FORMATS:
            return upper
        raise InvalidArgument(
            f"unsupported data format {value!r}: use csv or parquet", code=ErrorCode.DATA_INVALID
        )
    suffix = Path(path).suffix.lower() if path is not None else ""
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise InvalidArgument(
        f"cannot tell the format of {str(path)!r} from its name: pass --format csv or --format parquet "
        "(supported: .csv, .parquet)",
        code=ErrorCode.DATA_INVALID,
    )


@dataclass(frozen=True)
class WriteResult:
    relative_uri: str
    rows: int
    size: int


@runtime_checkable
class DataSource(Protocol):
    """A place that holds tables; see the module docstring for the guarantees. All methods block."""

    @property
    def name(self) -> str:
        """The DomainDataSource id this backend serves (for messages)."""
        ...

    def open_reader(
        self,
        relative_uri: str,
        *,
        file_format: FileFormat,
        columns: Sequence[str] | None = None,
        schema: Any = None,
    ) -> Any:
        """A `pyarrow.RecordBatchReader` over the selected columns (all when None), registered types."""
        ...

    def infer_schema(self, relative_uri: str, *, file_format: FileFormat) -> Any:
        """The `pyarrow.Schema` of the stored table, types valid for every row."""
        ...

    def write(
        self,
        relative_uri: str,
        batches: Iterable[Any],
        *,
        schema: Any,
        file_format: FileFormat,
        overwrite: bool = False,
    ) -> WriteResult:
        """Store a table from a stream of record batches, atomically (all or nothing)."""
        ...

    def import_file(
        self, path: Path, relative_uri: str, *, file_format: FileFormat, link: bool = False
    ) -> WriteResult:
        """Bring a local file into the source at `relative_uri` (never replacing an existing one)."""
        ...

    def exists(self, relative_uri: str) -> bool: ...

    def delete(self, relative_uri: str) -> bool:
        """Remove the table; False when it was not there."""
        ...


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some file systems cannot open directories; durability is best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _project(batches: Iterable[Any], columns: Sequence[str] | None) -> Iterator[Any]:
    for batch in batches:
        yield (
            batch.select(list(columns))
            if columns is not None and batch.schema.names != list(columns)
            else batch
        )


class LocalFsSource:
    """A directory on this machine holding CSV and Parquet files."""

    def __init__(self, root: Path | str, *, name: str = "localfs", create: bool = True) -> None:
        path = Path(root).expanduser()
        if not path.is_absolute():
            raise InvalidArgument(
                f"data source {name!r}: localfs path {str(root)!r} must be absolute",
                code=ErrorCode.DATASOURCE_INVALID,
            )
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self._name = name
        self.root = path.resolve()

    @property
    def name(self) -> str:
        return self._name

    # -- paths --------------------------------------------------------------------------------------

    def path_of(self, relative_uri: str) -> Path:
        """The file a relative URI names, refusing anything outside the root."""
        if not relative_uri or "\x00" in relative_uri:
            raise InvalidArgument(
                f"data source {self._name!r}: empty or malformed relative uri {relative_uri!r}",
                code=ErrorCode.DATA_INVALID,
            )
        pure = PurePosixPath(relative_uri)
        if pure.is_absolute() or relative_uri.startswith("~") or ".." in pure.parts:
            raise InvalidArgument(
                f"relative uri {relative_uri!r} escapes data source {self._name!r}: use a path inside the "
                "source, without '..' and not starting with '/' or '~'",
                code=ErrorCode.DATA_INVALID,
            )
        resolved = (self.root / pure).resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise InvalidArgument(
                f"relative uri {relative_uri!r} resolves outside data source {self._name!r} (a symlink?)",
                code=ErrorCode.DATA_INVALID,
            )
        return resolved

    def _existing(self, relative_uri: str) -> Path:
        path = self.path_of(relative_uri)
        if not path.is_file():
            raise NotFound(
                f"{relative_uri!r} is not in data source {self._name!r} (no file {path})",
                code=ErrorCode.DATA_NOT_FOUND,
            )
        return path

    @staticmethod
    def _temporary_for(final: Path) -> Path:
        return final.with_name(f".{final.name}{TEMP_MARKER}{uuid.uuid4().hex}")

    # -- reading ------------------------------------------------------------------------------------

    def open_reader(
        self,
        relative_uri: str,
        *,
        file_format: FileFormat,
        columns: Sequence[str] | None = None,
        schema: Any = None,
    ) -> Any:
        path = self._existing(relative_uri)
        wanted = list(columns) if columns is not None else None
        try:
            if file_format == "PARQUET":
                return self._parquet_reader(path, wanted)
            return self._csv_reader(path, wanted, schema)
        except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError, OSError) as exc:
            raise self._unreadable(relative_uri, file_format, exc) from exc

    def _csv_reader(self, path: Path, columns: list[str] | None, schema: Any) -> Any:
        types = {f.name: f.type for f in schema} if schema is not None else None
        convert = pacsv.ConvertOptions(column_types=types, include_columns=columns)
        reader = pacsv.open_csv(
            str(path), read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert
        )
        out_schema = reader.schema
        name = self._name

        def batches() -> Iterator[Any]:
            try:
                yield from reader
            except pa.ArrowInvalid as exc:  # a later block disagrees with the registered types
                raise InvalidArgument(
                    f"{path.name} in data source {name!r} no longer matches its registered columns: {exc}",
                    code=ErrorCode.DATA_INVALID,
                ) from exc

        return pa.RecordBatchReader.from_batches(out_schema, batches())

    def _parquet_reader(self, path: Path, columns: list[str] | None) -> Any:
        parquet = pq.ParquetFile(str(path))
        full = parquet.schema_arrow
        if columns is not None:
            missing = [c for c in columns if c not in full.names]
            if missing:
                parquet.close()
                raise pa.ArrowKeyError(f"columns {missing} are not in the file (it has {full.names})")
            out_schema = pa.schema([full.field(c) for c in columns])
        else:
            out_schema = full

        def batches() -> Iterator[Any]:
            with parquet:
                yield from _project(
                    parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns), columns
                )

        return pa.RecordBatchReader.from_batches(out_schema, batches())

    def infer_schema(self, relative_uri: str, *, file_format: FileFormat) -> Any:
        path = self._existing(relative_uri)
        try:
            schema = pq.read_schema(str(path)) if file_format == "PARQUET" else self._infer_csv(path)
        except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError, OSError) as exc:
            raise self._unreadable(relative_uri, file_format, exc) from exc
        names = list(schema.names)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidArgument(
                f"{relative_uri!r}: column names must be unique; {duplicates} appear more than once",
                code=ErrorCode.DATA_INVALID,
            )
        return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema])

    @staticmethod
    def _infer_csv(path: Path) -> Any:
        # Streaming first (bounded memory): if every block converts with the types inferred from the first
        # block, those types hold for the whole file.  Otherwise Arrow's whole-file reader unifies them.
        reader = pacsv.open_csv(str(path), read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES))
        try:
            for _ in reader:
                pass
            return reader.schema
        except pa.ArrowInvalid:
            return pacsv.read_csv(str(path)).schema

    def _unreadable(self, relative_uri: str, file_format: str, exc: BaseException) -> InvalidArgument:
        return InvalidArgument(
            f"cannot read {relative_uri!r} in data source {self._name!r} as {file_format}: {exc}",
            code=ErrorCode.DATA_INVALID,
        )

    # -- writing ------------------------------------------------------------------------------------

    def write(
        self,
        relative_uri: str,
        batches: Iterable[Any],
        *,
        schema: Any,
        file_format: FileFormat,
        overwrite: bool = False,
    ) -> WriteResult:
        final = self.path_of(relative_uri)
        self._refuse_existing(final, relative_uri, overwrite)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._temporary_for(final)
        rows = 0
        try:
            with pa.OSFile(str(temporary), "wb") as sink:
                if file_format == "PARQUET":
                    writer: Any = pq.ParquetWriter(sink, schema)
                else:
                    writer = pacsv.CSVWriter(sink, schema)
                try:
                    for batch in batches:
                        writer.write_batch(batch)
                        rows += int(batch.num_rows)
                finally:
                    writer.close()
            self._commit(temporary, final, relative_uri, overwrite)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            temporary.unlink(missing_ok=True)
            raise InvalidArgument(
                f"cannot write {relative_uri!r} to data source {self._name!r}: {exc}",
                code=ErrorCode.DATA_INVALID,
            ) from exc
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return WriteResult(relative_uri=relative_uri, rows=rows, size=final.stat().st_size)

    def import_file(
        self, path: Path, relative_uri: str, *, file_format: FileFormat, link: bool = False
    ) -> WriteResult:
        source = Path(path)
        if not source.is_file():
            raise NotFound(
                f"file {str(source)!r} does not exist or is not a file", code=ErrorCode.DATA_NOT_FOUND
            )
        final = self.path_of(relative_uri)
        self._refuse_existing(final, relative_uri, overwrite=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(source, final)
                _fsync(final.parent, directory=True)
                return WriteResult(relative_uri=relative_uri, rows=-1, size=final.stat().st_size)
            except FileExistsError as exc:
                raise self._exists_error(relative_uri) from exc
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                # another file system, or links not allowed: copy instead
        temporary = self._temporary_for(final)
        try:
            shutil.copyfile(source, temporary)
            self._commit(temporary, final, relative_uri, overwrite=False)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return WriteResult(relative_uri=relative_uri, rows=-1, size=final.stat().st_size)

    def _refuse_existing(self, final: Path, relative_uri: str, overwrite: bool) -> None:
        if not overwrite and final.exists():
            raise self._exists_error(relative_uri)

    def _exists_error(self, relative_uri: str) -> AlreadyExists:
        return AlreadyExists(
            f"{relative_uri!r} already exists in data source {self._name!r}", code=ErrorCode.DATA_EXISTS
        )

    def _commit(self, temporary: Path, final: Path, relative_uri: str, overwrite: bool) -> None:
        _fsync(temporary)
        if overwrite:
            os.replace(temporary, final)
        else:
            try:
                os.link(temporary, final)  # atomic and refuses an existing target
            except FileExistsError as exc:
                raise self._exists_error(relative_uri) from exc
            temporary.unlink()
        _fsync(final.parent, directory=True)

    # -- the rest -----------------------------------------------------------------------------------

    def exists(self, relative_uri: str) -> bool:
        return self.path_of(relative_uri).is_file()

    def delete(self, relative_uri: str) -> bool:
        path = self.path_of(relative_uri)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync(path.parent, directory=True)
        return True

    def sweep_temporaries(self) -> int:
        """Delete `.<name>.tmp-*` files left by a crash mid-write; call only when nothing is writing."""
        removed = 0
        for leftover in self.root.rglob(f".*{TEMP_MARKER}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        return removed


def _localfs(source: DomainDataSource) -> DataSource:
    info = source.spec.info
    nested = info.get("localfs")
    path = (nested.get("path") if isinstance(nested, dict) else None) or info.get("path") or source.spec.uri
    if not path or not isinstance(path, str):
        raise InvalidArgument(
            f"DomainDataSource {source.meta.name!r} (localfs) has no path: set spec.info.localfs.path",
            code=ErrorCode.DATASOURCE_INVALID,
        )
    return LocalFsSource(path, name=source.meta.name)


# type -> factory; later issues add "s3", "mysql", "postgresql" here.
SOURCE_TYPES: dict[str, Callable[[DomainDataSource], DataSource]] = {"localfs": _localfs}


def open_source(source: DomainDataSource) -> DataSource:
    """The backend serving a stored DomainDataSource."""
    factory = SOURCE_TYPES.get(source.spec.type)
    if factory is None:
        raise InvalidArgument(
            f"DomainDataSource {source.meta.name!r} has type {source.spec.type!r}, which this node does not "
            f"support yet (supported: {', '.join(sorted(SOURCE_TYPES))})",
            code=ErrorCode.DATASOURCE_INVALID,
        )
    return factory(source)
