"""libpsi's input file and the receiver's output, built with pyarrow (no SPU needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pytest

from accord.engines.psi.errors import InputError
from accord.engines.spu_psi.table import (
    KEY_COLUMN,
    ROW_COLUMN,
    SEPARATOR,
    encode_keys,
    escape,
    may_need_escaping,
    output_table,
    prepare_input,
    row_numbers,
    use_steady_memory_pool,
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


def test_one_key_column_is_encoded_as_the_join_of_one() -> None:
    column = pa.array(["x", None, "", "a,b", "ü"])
    encoded = encode_keys(pa.table({"a": column}), ["a"], "alice")
    joined = pc.binary_join_element_wise(KEY_COLUMN, escape(column), SEPARATOR)
    assert encoded.to_pylist() == joined.to_pylist() == ["k\x1fx", None, "k\x1f", "k\x1fa%2Cb", "k\x1fü"]


def test_large_string_keys_encode_like_strings() -> None:
    table = pa.table({"a": ["x", "a,b", None], "b": ["1", "2", "3"]})
    large = table.cast(pa.schema([("a", pa.large_string()), ("b", pa.large_string())]))
    for keys in (["a"], ["a", "b"], ["b", "a"]):
        expected = encode_keys(table, keys, "alice")
        assert encode_keys(large, keys, "alice").to_pylist() == expected.to_pylist()
        assert encode_keys(large, keys, "alice").type == pa.string()


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


def test_the_escaping_check_sees_every_special_character_in_any_layout() -> None:
    values = ["abc", None, "", "x%y", "plain", "a,b", 'q"', "l\rm", "n\no", "s\x1ft", "ünï", None, "tail"]
    layouts = [pa.array([value], pa.string()) for value in values] + [
        pa.array(values),
        pa.chunked_array([pa.array(values[:5]), pa.array(values[5:])]),
        pa.array(values, pa.large_string()),
    ]
    for column in layouts:
        expected = bool(pc.any(pc.match_substring_regex(column, '[%,"\r\n\x1f]')).as_py())
        assert may_need_escaping(column) == expected, column
    clean = pa.array(["a", None, "b,c", "d", "e"])  # a slice must not see its parent's other values
    assert may_need_escaping(clean.slice(3)) is False
    assert may_need_escaping(clean.slice(1, 2)) is True
    assert may_need_escaping(pa.chunked_array([clean.slice(0, 2), clean.slice(3)])) is False
    assert may_need_escaping(pa.array([], pa.string())) is False
    assert may_need_escaping(pa.array([None, None], pa.string())) is False


def test_row_numbers() -> None:
    assert row_numbers(0).to_pylist() == []
    assert row_numbers(5).to_pylist() == [0, 1, 2, 3, 4]
    assert row_numbers(5).type == pa.int64()


def _reference(rows: list[tuple[str | None, ...]], duplicates: str) -> tuple[list[int], list[bool], int, int]:
    """(rows written, kept, distinct keys, rows dropped) as the docstring defines them, in plain Python."""
    seen: set[tuple[str | None, ...]] = set()
    written, kept, dropped = [], [], 0
    for i, key in enumerate(rows):
        if any(part is None for part in key):
            kept.append(True)
            continue
        first = key not in seen
        seen.add(key)
        if first or duplicates == "keep-all":
            written.append(i)
        elif duplicates == "keep-first":
            dropped += 1
        kept.append(first or duplicates == "keep-all")
    return written, kept, len(seen), dropped


@pytest.mark.parametrize("seed", range(6))
def test_prepare_input_matches_a_plain_python_reference(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 7, 300, 2000])
    pool = ["a", "b", "a,b", "", "%", "x\ny", "ü"] + [f"v{i}" for i in range(rng.choice([3, 50, 5000]))]

    def value() -> str | None:
        return None if rng.random() < 0.05 else rng.choice(pool)

    a = [value() for _ in range(n)]
    b = [value() for _ in range(n)]
    cut = rng.randrange(n + 1)
    table = pa.Table.from_batches(
        [
            batch
            for batch in (
                pa.record_batch({"a": a[:cut], "b": b[:cut]}),
                pa.record_batch({"a": a[cut:], "b": b[cut:]}),
            )
            if batch.num_rows
        ]
    )
    for keys in (["a"], ["a", "b"]):
        rows = [tuple(col[i] for col in ([a] if keys == ["a"] else [a, b])) for i in range(n)]
        for duplicates in ("error", "keep-first", "keep-all"):
            written, kept, distinct, dropped = _reference(rows, duplicates)
            target = tmp_path / f"{seed}-{len(keys)}-{duplicates}.csv"
            nulls = sum(any(p is None for p in key) for key in rows)
            if duplicates == "error" and distinct < n - nulls:
                with pytest.raises(InputError, match=f"{n - nulls - distinct} of {n - nulls} rows repeat"):
                    prepare_input(table, keys, party="a", duplicates=duplicates, psi_csv=target)
                assert not target.exists()
                continue
            prepared = prepare_input(table, keys, party="a", duplicates=duplicates, psi_csv=target)
            assert (prepared.rows_read, prepared.rows_null_key) == (n, nulls)
            assert (prepared.unique_keys, prepared.rows_dropped) == (distinct, dropped)
            assert prepared.kept.to_pylist() == kept
            if written:
                lines = pa_csv.read_csv(
                    target, convert_options=pa_csv.ConvertOptions(strings_can_be_null=False)
                )
                assert lines.column(ROW_COLUMN).to_pylist() == written
                keys_written = encode_keys(table, keys, "a").take(pa.array(written)).to_pylist()
                assert lines.column(KEY_COLUMN).to_pylist() == keys_written
            else:
                assert pa_csv.read_csv(target).num_rows == 0


def test_only_null_keys_give_an_empty_input_file(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([None, None], pa.string()), "v": ["1", "2"]})
    prepared = prepare_input(table, ["id"], party="a", duplicates="keep-first", psi_csv=tmp_path / "in.csv")
    written = pa_csv.read_csv(tmp_path / "in.csv")
    assert (written.column_names, written.num_rows) == ([KEY_COLUMN, ROW_COLUMN], 0)
    assert (prepared.unique_keys, prepared.rows_null_key, prepared.kept.to_pylist()) == (0, 2, [True, True])


def test_the_engine_uses_jemalloc_unless_told_otherwise() -> None:
    before = pa.default_memory_pool()
    try:
        assert use_steady_memory_pool({"ARROW_DEFAULT_MEMORY_POOL": "system"}) == before.backend_name
        assert use_steady_memory_pool({}) == "jemalloc"
        assert pa.default_memory_pool().backend_name == "jemalloc"
    finally:
        pa.set_memory_pool(before)
