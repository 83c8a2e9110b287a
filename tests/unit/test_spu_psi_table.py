"""libpsi's input file and the receiver's output, built with pyarrow (no SPU needed)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from accord.engines.psi.errors import InputError
from accord.engines.spu_psi.table import (
    KEY_COLUMN,
    ROW_COLUMN,
    encode_keys,
    output_table,
    prepare_input,
)


def test_encoded_keys_hold_no_csv_special_character_and_never_collide() -> None:
    table = pa.table(
        {
            "a": ["x,y", 'q"', "l\nm", "", "%2C", "p\x1fq", "x", "x,y"],
            "b": ["1", "1", "1", "1", "1", "1", "y,1", None],
        }
    )
    keys = encode_keys(table, ["a", "b"], "alice").to_pylist()
    for key in keys[:-1]:
        assert key.startswith(KEY_COLUMN) and not set(key) & set(',"\r\n')
    assert keys[-1] is None  # a null in any key column: never matches
    assert len(set(keys[:-1])) == 7  # ("x", "y,1") and ("x,y", "1") differ, "" and "%2C" too
    single = encode_keys(pa.table({"a": ["%2C", ","]}), ["a"], "alice").to_pylist()
    assert single[0] != single[1]


def test_non_string_keys_use_their_canonical_text() -> None:
    ints = encode_keys(pa.table({"id": pa.array([7, 8], pa.int64())}), ["id"], "bob").to_pylist()
    texts = encode_keys(pa.table({"id": ["7", "8"]}), ["id"], "alice").to_pylist()
    assert ints == texts


def test_input_file_has_one_line_per_usable_row(tmp_path: Path) -> None:
    table = pa.table({"id": ["b", None, "a"], "v": ["1", "2", "3"]})
    prepared = prepare_input(table, ["id"], party="alice", duplicates="error", psi_csv=tmp_path / "in.csv")
    written = pa_csv.read_csv(tmp_path / "in.csv")
    assert written.column_names == [KEY_COLUMN, ROW_COLUMN]
    assert written.column(ROW_COLUMN).to_pylist() == [0, 2]
    assert (prepared.rows_read, prepared.rows_null_key, prepared.unique_keys) == (3, 1, 2)
    assert prepared.keys_unique


def test_duplicates_error_gives_a_count_never_a_key(tmp_path: Path) -> None:
    table = pa.table({"id": ["secret", "secret", "x"]})
    with pytest.raises(InputError) as info:
        prepare_input(table, ["id"], party="bob", duplicates="error", psi_csv=tmp_path / "in.csv")
    assert "inputs.bob.keys: 1 of 3 rows repeat a key" in str(info.value)
    assert "secret" not in str(info.value)
    assert not (tmp_path / "in.csv").exists()  # refused before anything is written


def test_keep_first_and_keep_all(tmp_path: Path) -> None:
    table = pa.table({"id": ["k", "j", "k", None], "v": ["1", "2", "3", "4"]})
    first = prepare_input(table, ["id"], party="a", duplicates="keep-first", psi_csv=tmp_path / "f.csv")
    assert pa_csv.read_csv(tmp_path / "f.csv").column(ROW_COLUMN).to_pylist() == [0, 1]
    assert first.rows_dropped == 1 and first.kept.to_pylist() == [True, True, False, True]
    every = prepare_input(table, ["id"], party="a", duplicates="keep-all", psi_csv=tmp_path / "a.csv")
    assert pa_csv.read_csv(tmp_path / "a.csv").column(ROW_COLUMN).to_pylist() == [0, 1, 2]
    assert not every.keys_unique  # libpsi joins duplicates (both parties decide it from the config)


def test_output_inner_left_and_folded(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b", "c", None], "v": [1, 2, 3, 4]})
    prepared = prepare_input(table, ["id"], party="a", duplicates="error", psi_csv=tmp_path / "in.csv")
    matched = pa.array([2, 0], pa.int64())  # libpsi's aligned order
    inner = output_table(prepared, matched, join="inner", fold_repeats=False)
    assert inner.column("v").to_pylist() == [3, 1] and inner.schema == table.schema
    left = output_table(prepared, matched, join="left", fold_repeats=False)
    assert left.column("v").to_pylist() == [3, 1, 2, 4]
    assert left.column("_psi_matched").to_pylist() == [True, True, False, False]
    repeated = pa.array([2, 2, 0, 0, 0], pa.int64())  # keep-all: the join's product
    assert output_table(prepared, repeated, join="inner", fold_repeats=False).num_rows == 5
    assert output_table(prepared, repeated, join="inner", fold_repeats=True).column("v").to_pylist() == [3, 1]
