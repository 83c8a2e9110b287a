"""DomainData registration: the default source, columns inferred with types, outputs with lineage, errors;
and the localfs details the contract suite does not cover (symlink escapes, crash leftovers, hard links)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accord.datamesh.columns import arrow_type, columns_from_schema, type_name
from accord.datamesh.registry import (
    DEFAULT_SOURCE,
    JOB_LABEL,
    ensure_default_source,
    register_file,
    register_output,
)
from accord.datamesh.sources import LocalFsSource, file_format_of, open_source
from accord.errors import AlreadyExists, ErrorCode, InvalidArgument, NotFound
from accord.resources.audit import AuditRecord
from accord.resources.data import DomainData, DomainDataSource, DomainDataSourceSpec
from accord.resources.meta import ObjectMeta
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

CSV = "id,name,age,score\n001,ann,31,0.5\n002,bob,,1.5\n003,cy,47,2\n"


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path / "node")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    return path


async def _audit(store: MemoryStore, action: str) -> list[AuditRecord]:
    return [
        r for r in await store.list("AuditRecord") if isinstance(r, AuditRecord) and r.spec.action == action
    ]


async def test_default_source_is_created_once(store: MemoryStore, settings: NodeSettings) -> None:
    first = await ensure_default_source(store, settings)
    again = await ensure_default_source(store, settings)
    assert first.meta.name == DEFAULT_SOURCE and first.spec.type == "localfs"
    assert again.meta.resource_version == first.meta.resource_version
    assert settings.data_dir.is_dir()
    assert first.spec.info["localfs"]["path"] == str(settings.data_dir)


async def test_register_csv_infers_typed_columns_and_copies(
    store: MemoryStore, settings: NodeSettings, csv_file: Path
) -> None:
    await ensure_default_source(store, settings)
    data = await register_file(store, settings, "people", csv_file)
    assert [(c.name, c.type) for c in data.spec.columns] == [
        ("id", "int64"),
        ("name", "str"),
        ("age", "int64"),
        ("score", "float64"),
    ]
    assert data.meta.domain == "alice" and data.spec.author == "alice"
    assert data.spec.file_format == "CSV" and data.spec.relative_uri == "people.csv"
    assert (settings.data_dir / "people.csv").read_text() == CSV
    records = await _audit(store, "data.register")
    assert [r.spec.target_name for r in records] == ["people"]


async def test_type_override_keeps_leading_zeros(
    store: MemoryStore, settings: NodeSettings, csv_file: Path
) -> None:
    await ensure_default_source(store, settings)
    data = await register_file(store, settings, "people", csv_file, column_types={"id": "str"})
    assert data.spec.columns[0].type == "str"
    with pytest.raises(InvalidArgument, match=r"not in people\.csv"):
        await register_file(store, settings, "people2", csv_file, column_types={"nope": "str"})
    with pytest.raises(InvalidArgument) as err:  # 'ann' cannot be an integer: checked over every row
        await register_file(store, settings, "people3", csv_file, column_types={"name": "int64"})
    assert err.value.code == ErrorCode.DATA_INVALID


async def test_register_parquet(store: MemoryStore, settings: NodeSettings, tmp_path: Path) -> None:
    await ensure_default_source(store, settings)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": ["a", "b"], "v": [1.0, 2.0]}), path)
    data = await register_file(store, settings, "tp", path)
    assert data.spec.file_format == "PARQUET"
    assert [(c.name, c.type) for c in data.spec.columns] == [("k", "str"), ("v", "float64")]


async def test_registration_errors_are_typed(
    store: MemoryStore, settings: NodeSettings, csv_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(NotFound) as err:
        await register_file(store, settings, "x", csv_file)  # no default source yet
    assert err.value.code == ErrorCode.DATASOURCE_NOT_FOUND and DEFAULT_SOURCE in err.value.message
    await ensure_default_source(store, settings)
    with pytest.raises(NotFound) as err:
        await register_file(store, settings, "x", tmp_path / "missing.csv")
    assert err.value.code == ErrorCode.DATA_NOT_FOUND and "missing.csv" in err.value.message
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidArgument) as bad_format:
        await register_file(store, settings, "x", text)
    assert bad_format.value.code == ErrorCode.DATA_INVALID and "--format" in bad_format.value.message
    with pytest.raises(InvalidArgument) as bad_format:
        await register_file(store, settings, "x", csv_file, "xlsx")
    assert "unsupported data format 'xlsx'" in bad_format.value.message
    with pytest.raises(InvalidArgument) as bad_name:
        await register_file(store, settings, "Not_A_Label", csv_file)
    assert bad_name.value.code == ErrorCode.DATA_INVALID
    with pytest.raises(InvalidArgument, match="absolute"):
        await register_file(store, settings, "x", "relative.csv")
    await register_file(store, settings, "people", csv_file)
    with pytest.raises(AlreadyExists) as taken:
        await register_file(store, settings, "people", csv_file)
    assert taken.value.code == ErrorCode.DATA_EXISTS
    with pytest.raises(NotFound) as unknown_source:
        await register_file(store, settings, "y", csv_file, datasource="s3-bucket")
    assert unknown_source.value.code == ErrorCode.DATASOURCE_NOT_FOUND
    # nothing half-registered: only the successful copy is in the source
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["people.csv"]


async def test_malformed_csv_never_enters_the_source(
    store: MemoryStore, settings: NodeSettings, tmp_path: Path
) -> None:
    await ensure_default_source(store, settings)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3\n")
    with pytest.raises(InvalidArgument) as err:
        await register_file(store, settings, "bad", bad)
    assert err.value.code == ErrorCode.DATA_INVALID and "CSV" in err.value.message
    assert list(settings.data_dir.iterdir()) == []


async def test_orphan_file_gets_a_fresh_name(
    store: MemoryStore, settings: NodeSettings, csv_file: Path
) -> None:
    await ensure_default_source(store, settings)
    (settings.data_dir / "people.csv").write_text("left over\n")
    data = await register_file(store, settings, "people", csv_file)
    assert data.spec.relative_uri.startswith("people-") and data.spec.relative_uri.endswith(".csv")
    assert (settings.data_dir / "people.csv").read_text() == "left over\n"


async def test_unsupported_source_type(store: MemoryStore, settings: NodeSettings, csv_file: Path) -> None:
    await store.create(
        DomainDataSource(meta=ObjectMeta(name="bucket"), spec=DomainDataSourceSpec(type="s3", uri="s3://b"))
    )
    with pytest.raises(InvalidArgument) as err:
        await register_file(store, settings, "x", csv_file, datasource="bucket")
    assert err.value.code == ErrorCode.DATASOURCE_INVALID and "'s3'" in err.value.message


async def test_register_output_records_lineage(store: MemoryStore, settings: NodeSettings) -> None:
    await ensure_default_source(store, settings)
    table = pa.table({"id": [1, 2]})
    source = LocalFsSource(settings.data_dir)
    source.write("out.csv", table.to_batches(), schema=table.schema, file_format="CSV")
    data = await register_output(
        store,
        settings,
        name="job-1-psi-output",
        relative_uri="out.csv",
        file_format="CSV",
        columns=columns_from_schema(table.schema),
        inputs=["b-table", "a-table", "a-table"],
        task="job-1-psi",
        job="job-1",
        rows=2,
    )
    assert data.spec.lineage.inputs == ["a-table", "b-table"]
    assert (data.spec.lineage.task, data.spec.lineage.job) == ("job-1-psi", "job-1")
    assert data.meta.labels[JOB_LABEL] == "job-1" and data.spec.attributes["rows"] == "2"
    assert [r.spec.actor for r in await _audit(store, "data.write")] == ["task/job-1-psi"]
    # a second output with the same name is refused and its file removed
    source.write("out2.csv", table.to_batches(), schema=table.schema, file_format="CSV")
    with pytest.raises(AlreadyExists):
        await register_output(
            store,
            settings,
            name="job-1-psi-output",
            relative_uri="out2.csv",
            file_format="CSV",
            columns=[],
            inputs=[],
            task="t",
            job="j",
        )
    assert not source.exists("out2.csv")
    assert isinstance(await store.get("DomainData", "job-1-psi-output"), DomainData)


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = LocalFsSource(root)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    os.symlink(secret, root / "link.csv")
    with pytest.raises(InvalidArgument, match="resolves outside"):
        source.open_reader("link.csv", file_format="CSV")


def test_crash_leftovers_are_swept(tmp_path: Path) -> None:
    source = LocalFsSource(tmp_path / "root")
    (source.root / ".out.csv.tmp-0123").write_text("half")
    (source.root / "kept.csv").write_text("a\n1\n")
    assert source.sweep_temporaries() == 1
    assert sorted(p.name for p in source.root.iterdir()) == ["kept.csv"]


def test_import_by_hard_link(tmp_path: Path) -> None:
    source = LocalFsSource(tmp_path / "root")
    original = tmp_path / "x.csv"
    original.write_text("a\n1\n")
    source.import_file(original, "x.csv", file_format="CSV", link=True)
    assert os.path.samefile(original, source.path_of("x.csv"))


def test_localfs_needs_an_absolute_path() -> None:
    with pytest.raises(InvalidArgument) as err:
        open_source(
            DomainDataSource(
                meta=ObjectMeta(name="rel"), spec=DomainDataSourceSpec(type="localfs", info={"path": "data"})
            )
        )
    assert err.value.code == ErrorCode.DATASOURCE_INVALID
    with pytest.raises(InvalidArgument, match="no path"):
        open_source(DomainDataSource(meta=ObjectMeta(name="none"), spec=DomainDataSourceSpec(type="localfs")))


def test_type_names_round_trip() -> None:
    for name in ("str", "int64", "float64", "float32", "bool", "date32", "int8"):
        assert type_name(arrow_type(name)) == name
    assert arrow_type("int") == pa.int64() and arrow_type("float") == pa.float64()
    with pytest.raises(InvalidArgument, match="unknown column type"):
        arrow_type("wat")
    assert file_format_of(None, "x.PQ") == "PARQUET" and file_format_of("Csv") == "CSV"
