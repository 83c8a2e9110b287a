"""Local CSV/Parquet readers and writers behind the TableReader/TableWriter interfaces."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accord.engines.psi.errors import InputError
from accord.engines.psi.io import (
    CsvTableReader,
    ParquetTableReader,
    open_file_reader,
    open_file_writer,
)


def test_csv_reads_every_column_as_text_in_bounded_batches(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,zip,amount\n" + "".join(f"u{i},{i:05d},1.50\n" for i in range(1000)))
    reader = open_file_reader(str(path))
    assert isinstance(reader, CsvTableReader)
    assert reader.schema().names == ["id", "zip", "amount"]
    batches = list(reader.iter_batches(None, batch_rows=300))
    assert max(b.num_rows for b in batches) <= 300
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 1000
    assert table.column("zip")[7].as_py() == "00007"  # leading zeros survive
    assert table.column("amount")[0].as_py() == "1.50"
    only = pa.Table.from_batches(list(reader.iter_batches(["zip"], 512)))
    assert only.column_names == ["zip"]


def test_csv_with_bom_quotes_and_line_breaks_in_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfid,note\n"a\nb","x, y"\nc,z\n')
    reader = CsvTableReader(path)
    assert reader.schema().names == ["id", "note"]
    table = pa.Table.from_batches(list(reader.iter_batches()))
    assert table.to_pylist() == [{"id": "a\nb", "note": "x, y"}, {"id": "c", "note": "z"}]


def test_csv_problems_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        CsvTableReader(tmp_path / "missing.csv").schema()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        CsvTableReader(empty).schema()


def test_parquet_keeps_types(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", None]}), path)
    reader = open_file_reader(str(path))
    assert isinstance(reader, ParquetTableReader)
    assert reader.schema().field("id").type == pa.int64()
    table = pa.Table.from_batches(list(reader.iter_batches(["id"], 2)))
    assert table.column("id").to_pylist() == [1, 2, 3]


@pytest.mark.parametrize("name", ["out.csv", "out.parquet"])
def test_writer_is_invisible_until_commit(tmp_path: Path, name: str) -> None:
    target = tmp_path / "sub" / name
    table = pa.table({"id": ["a", "b"], "v": ["1", "2"]})
    writer = open_file_writer(str(target), table.schema)
    writer.write(table.to_batches()[0])
    assert not target.exists()
    assert writer.commit() == str(target)
    assert open_file_reader(str(target)).schema().names == ["id", "v"]
    read = pa.Table.from_batches(list(open_file_reader(str(target)).iter_batches()))
    assert read.column("id").to_pylist() == ["a", "b"]
    assert [p.name for p in target.parent.iterdir()] == [name]


def test_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    table = pa.table({"id": ["a"]})
    writer = open_file_writer(str(tmp_path / "out.csv"), table.schema)
    writer.write(table)
    writer.abort()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
