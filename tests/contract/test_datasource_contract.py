"""The DataSource contract, run against every implementation (localfs now; S3/MySQL/PostgreSQL later).

A new backend joins by adding a factory to `IMPLEMENTATIONS` (building a fresh, empty source per test
and tearing it down); every test below must pass unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from accord.datamesh.columns import columns_from_schema, schema_from_columns
from accord.datamesh.sources import FORMATS, DataSource, FileFormat, LocalFsSource
from accord.errors import AlreadyExists, ErrorCode, InvalidArgument, NotFound

SourceFactory = Callable[[Path], DataSource]

IMPLEMENTATIONS: dict[str, SourceFactory] = {
    "localfs": lambda tmp: LocalFsSource(tmp / "localfs-root", name="contract-localfs"),
}

TABLE = pa.table(
    {
        "id": pa.array(["007", "010", "123"], pa.string()),
        "age": pa.array([31, None, 47], pa.int64()),
        "score": pa.array([0.5, 1.25, -3.0], pa.float64()),
        "vip": pa.array([True, False, None], pa.bool_()),
    }
)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DataSource]:
    yield IMPLEMENTATIONS[request.param](tmp_path)


@pytest.fixture(params=FORMATS)
def file_format(request: pytest.FixtureRequest) -> FileFormat:
    fmt: FileFormat = request.param
    return fmt


def _uri(fmt: FileFormat, stem: str = "t") -> str:
    return f"{stem}.{fmt.lower()}"


def _read(source: DataSource, uri: str, fmt: FileFormat, columns: list[str] | None = None) -> pa.Table:
    schema = TABLE.schema if fmt == "CSV" else None
    return source.open_reader(uri, file_format=fmt, columns=columns, schema=schema).read_all()


def test_round_trip_keeps_rows_types_and_nulls(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    result = source.write(
        uri, TABLE.to_batches(max_chunksize=2), schema=TABLE.schema, file_format=file_format
    )
    assert result.rows == 3 and result.relative_uri == uri and result.size > 0
    assert source.exists(uri)
    assert _read(source, uri, file_format).equals(TABLE)


def test_reads_select_columns_in_the_order_asked(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    source.write(uri, TABLE.to_batches(), schema=TABLE.schema, file_format=file_format)
    got = _read(source, uri, file_format, columns=["score", "id"])
    assert got.schema.names == ["score", "id"]
    assert got.column("id").to_pylist() == ["007", "010", "123"]


def test_unknown_column_is_invalid(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    source.write(uri, TABLE.to_batches(), schema=TABLE.schema, file_format=file_format)
    with pytest.raises(InvalidArgument) as err:
        _read(source, uri, file_format, columns=["nope"])
    assert err.value.code == ErrorCode.DATA_INVALID and "nope" in err.value.message


def test_infer_schema_gives_types_valid_for_every_row(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    source.write(uri, TABLE.to_batches(), schema=TABLE.schema, file_format=file_format)
    schema = source.infer_schema(uri, file_format=file_format)
    types = {c.name: c.type for c in columns_from_schema(schema)}
    assert types["age"] == "int64" and types["score"] == "float64" and types["vip"] == "bool"
    # CSV cannot tell "007" from 7: inference says int64, the registered type (str) keeps the zeros.
    assert types["id"] in ("int64", "str")
    kept = source.open_reader(
        uri, file_format=file_format, schema=schema_from_columns(columns_from_schema(TABLE.schema))
    ).read_all()
    assert kept.column("id").to_pylist() == ["007", "010", "123"]


def test_a_failing_stream_leaves_nothing(source: DataSource, file_format: FileFormat) -> None:
    def broken() -> Iterator[pa.RecordBatch]:
        yield from TABLE.to_batches(max_chunksize=1)[:2]
        raise RuntimeError("producer died")

    uri = _uri(file_format)
    with pytest.raises(RuntimeError, match="producer died"):
        source.write(uri, broken(), schema=TABLE.schema, file_format=file_format)
    assert not source.exists(uri)
    with pytest.raises(NotFound):
        source.open_reader(uri, file_format=file_format)


def test_existing_output_is_never_clobbered(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    source.write(uri, TABLE.to_batches(), schema=TABLE.schema, file_format=file_format)
    other = TABLE.slice(0, 1)
    with pytest.raises(AlreadyExists) as err:
        source.write(uri, other.to_batches(), schema=TABLE.schema, file_format=file_format)
    assert err.value.code == ErrorCode.DATA_EXISTS
    assert _read(source, uri, file_format).num_rows == 3
    source.write(uri, other.to_batches(), schema=TABLE.schema, file_format=file_format, overwrite=True)
    assert _read(source, uri, file_format).num_rows == 1


def test_empty_table_round_trips_with_its_schema(source: DataSource, file_format: FileFormat) -> None:
    uri = _uri(file_format)
    result = source.write(uri, [], schema=TABLE.schema, file_format=file_format)
    assert result.rows == 0
    got = _read(source, uri, file_format)
    assert got.num_rows == 0 and got.schema.names == TABLE.schema.names


def test_exists_and_delete(source: DataSource) -> None:
    assert not source.exists("missing.csv")
    assert source.delete("missing.csv") is False
    source.write("d.csv", TABLE.to_batches(), schema=TABLE.schema, file_format="CSV")
    assert source.delete("d.csv") is True and not source.exists("d.csv")


def test_missing_table_is_not_found(source: DataSource, file_format: FileFormat) -> None:
    with pytest.raises(NotFound) as err:
        source.open_reader(_uri(file_format, "absent"), file_format=file_format)
    assert err.value.code == ErrorCode.DATA_NOT_FOUND
    with pytest.raises(NotFound):
        source.infer_schema(_uri(file_format, "absent"), file_format=file_format)


def test_import_file_copies_and_refuses_existing(source: DataSource, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,x\n2,y\n")
    source.import_file(outside, "in.csv", file_format="CSV")
    outside.write_text("a,b\n9,z\n")  # a copy: later edits do not change the imported data
    assert source.open_reader("in.csv", file_format="CSV").read_all().column("a").to_pylist() == [1, 2]
    with pytest.raises(AlreadyExists):
        source.import_file(outside, "in.csv", file_format="CSV")


def test_malformed_file_is_invalid(source: DataSource, tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    source.import_file(bad, "bad.parquet", file_format="PARQUET")
    with pytest.raises(InvalidArgument) as err:
        source.infer_schema("bad.parquet", file_format="PARQUET")
    assert err.value.code == ErrorCode.DATA_INVALID and "PARQUET" in err.value.message


@pytest.mark.parametrize("uri", ["../escape.csv", "/etc/passwd", "a/../../b.csv", "~/x.csv", ""])
def test_uris_outside_the_source_are_refused(source: DataSource, uri: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        source.exists(uri)
    assert err.value.code == ErrorCode.DATA_INVALID
    with pytest.raises(InvalidArgument):
        source.write(uri, [], schema=TABLE.schema, file_format="CSV")
