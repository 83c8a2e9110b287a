"""What libpsi sees and what the receiver gets: the PSI input file and the aligned output table.

libpsi reads a CSV file, shells out to `sort --field-separator=, --key=1,1` on it, and writes a CSV of
the party's matched rows sorted by key, aligned with the peer's.  Handing it the user's table as is
would make it the judge of CSV quoting (a key holding a comma or a line break breaks `sort`'s fields),
of empty cells (read as null) and of column names.  So the engine gives it a file it cannot misread:

    k,_accord_row                       one line per usable row of this party's table
    k\x1f<esc(key1)>\x1f<esc(key2)>,17   "k", then each key column's text, escaped, joined by U+001F

`esc` percent-encodes `%`, `,`, `"`, CR, LF and U+001F, so the line holds no CSV special character, the
key is never empty and different key tuples never collide; both parties apply the same encoding, so equal
keys stay equal.  Key text follows the built-in engine's rule: strings as written, other Arrow types by
their canonical text (int 7 -> "7"); a row with a null in any key column is left out (it never matches).

`_accord_row` is the row's index in the party's own table, which the engine keeps in memory.  libpsi's
output therefore carries row indices in aligned order, and the output table is `table.take(indices)`:
the user's columns and types come back untouched (also from DataMesh), and `join: left` (all own rows,
matched ones first, plus `_psi_matched`), `duplicates: keep-first` and a single receiver under
`keep-all` are computed here exactly as the built-in engine defines them, instead of adopting libpsi's
own, different, left-join semantics.

Duplicates: `error` counts repeated keys before anything about the input is sent (the engine's hello;
the message gives the count, never a key; `pc.unique` in one hash pass, the dictionary of first
occurrences only when there are repeats); `keep-first` writes only the first row of each key;
`keep-all` writes every row and lets libpsi join (`keys_unique=False`): its output is the SQL join, the
product of both sides' rows per key, aligned at both parties -- what the built-in engine gives two
receivers.  A single receiver gets each of its own matched rows once (the product is folded back by row
index).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from accord.engines.psi.config import MATCH_COLUMN
from accord.engines.psi.errors import InputError
from accord.engines.psi.inputs import repeated_keys
from accord.engines.psi.io import TableReader

KEY_COLUMN = "k"
ROW_COLUMN = "_accord_row"
SEPARATOR = "\x1f"
# `%` first, so that the escapes themselves are never escaped again.
_ESCAPES = (("%", "%25"), (",", "%2C"), ('"', "%22"), ("\r", "%0D"), ("\n", "%0A"), (SEPARATOR, "%1F"))


def use_steady_memory_pool(environ: Mapping[str, str]) -> str:
    """Make jemalloc pyarrow's memory pool for this process (unless ARROW_DEFAULT_MEMORY_POOL says
    otherwise); returns the pool's name.

    pyarrow's default, mimalloc, backs large buffers with transparent huge pages.  Where the kernel
    compacts memory to find them when they are first touched (THP defrag "madvise" on a busy machine),
    reading and preparing a million rows takes 0.3-0.4 s more system time, at random (measured: 0.29 to
    0.74 s wall, against a steady 0.34-0.37 s with jemalloc).  Buffers allocated before keep their pool.
    """
    if not environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc: keep its default
            pass
    return str(pa.default_memory_pool().backend_name)


def key_text(column: Any, party: str, name: str) -> Any:
    """A key column as `string` (strings as they are, other types by their canonical text; also
    `large_string`, e.g. from Polars' Parquet: the join with the other key columns needs one type)."""
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"inputs.{party}: key column {name!r} of type {column.type} has no text form"
        ) from exc


_SPECIAL_BYTES = tuple(plain.encode() for plain, _ in _ESCAPES)


def may_need_escaping(column: Any) -> bool:
    """False only if no value of the (string) column holds a special character.

    Scans each chunk's character data as one block of bytes (memchr-fast, instead of a regex per
    value).  The block may hold bytes of null or empty values in between: a false True only means
    escaping text that has nothing to escape, which gives the same text.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        if data is None:
            continue
        wide = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
        bounds = pa.Array.from_buffers(
            pa.int64() if wide else pa.int32(), len(chunk) + 1, [None, offsets], offset=chunk.offset
        )
        start, end = bounds[0].as_py(), bounds[len(chunk)].as_py()
        text = data.slice(start, end - start).to_pybytes()
        if any(special in text for special in _SPECIAL_BYTES):
            return True
    return False


def escape(column: Any) -> Any:
    """Percent-encode the special characters; the identity on text without any (checked first, so
    each party skips the work on its own: the result is the same whether or not it escapes)."""
    if not may_need_escaping(column):
        return column
    for plain, escaped in _ESCAPES:
        column = pc.replace_substring(column, plain, escaped)
    return column


def encode_keys(table: Any, keys: Sequence[str], party: str) -> Any:
    """The libpsi key of every row (null where any key column is null)."""
    parts = [escape(key_text(table.column(name), party, name)) for name in keys]
    if len(parts) == 1:  # the same text as the join below, a quarter of its time
        return pc.binary_replace_slice(parts[0], 0, 0, KEY_COLUMN + SEPARATOR)
    return pc.binary_join_element_wise(KEY_COLUMN, *parts, SEPARATOR)


def first_occurrences(codes: Any) -> Any:
    """True for the first row of each dictionary code (codes appear in order of first occurrence)."""
    running = pc.cumulative_max(codes)
    previous = pa.concat_arrays([pa.array([-1], codes.type), running.slice(0, max(0, len(running) - 1))])
    return pc.greater(codes, previous)


def row_numbers(rows: int) -> Any:
    """0, 1, ..., rows - 1 as int64 (in Arrow: `pa.array(range(rows))` costs 70 ms per million)."""
    return pc.indices_nonzero(pa.repeat(True, rows)).cast(pa.int64())


@dataclass
class PreparedInput:
    """This party's table in memory and the libpsi input file written from it."""

    table: Any  # pyarrow.Table, every column, rows in input order
    kept: Any  # pyarrow.BooleanArray: rows that take part (after keep-first; null keys included)
    psi_csv: Path
    rows_read: int
    rows_null_key: int
    rows_dropped: int
    unique_keys: int
    keys_unique: bool  # what libpsi may assume: decided by the config alone, so both sides agree


def read_all(reader: TableReader, batch_rows: int = 1 << 16) -> Any:
    """The whole table (one read: a DataMesh read may spend a grant use)."""
    schema = reader.schema()
    batches = list(reader.iter_batches(None, batch_rows))
    return pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()


def prepare_input(
    table: Any, keys: Sequence[str], *, party: str, duplicates: str, psi_csv: Path
) -> PreparedInput:
    """Check duplicates and write libpsi's input file; raises InputError (before the engine's hello)."""
    rows = table.num_rows
    encoded = encode_keys(table, keys, party).combine_chunks() if rows else pa.array([], pa.string())
    null_rows = encoded.null_count
    if null_rows:
        valid = pc.is_valid(encoded)
        write_keys, write_rows = encoded.filter(valid), pc.indices_nonzero(valid).cast(pa.int64())
    else:
        write_keys, write_rows = encoded, row_numbers(rows)
    valid_rows = rows - null_rows
    unique = len(pc.unique(write_keys))  # the common case: one hash pass, nothing else
    kept = pa.repeat(True, rows)
    dropped = 0
    if unique < valid_rows:
        repeated = valid_rows - unique
        if duplicates == "error":
            raise repeated_keys(party, keys, repeated, valid_rows)
        if duplicates == "keep-first":
            first = first_occurrences(pc.dictionary_encode(write_keys).indices.cast(pa.int64()))
            write_keys, write_rows = write_keys.filter(first), write_rows.filter(first)
            kept = pc.replace_with_mask(kept, pc.is_valid(encoded), first) if null_rows else first
            dropped = repeated
    out = pa.table({KEY_COLUMN: write_keys, ROW_COLUMN: write_rows})
    psi_csv.parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(out, str(psi_csv), pa_csv.WriteOptions(quoting_style="none"))
    return PreparedInput(
        table=table,
        kept=kept,
        psi_csv=psi_csv,
        rows_read=rows,
        rows_null_key=null_rows,
        rows_dropped=dropped,
        unique_keys=unique,
        keys_unique=duplicates != "keep-all",
    )


def matched_rows(psi_output: Path) -> Any:
    """The row indices libpsi output, in aligned order (empty if it wrote nothing)."""
    if not psi_output.is_file() or psi_output.stat().st_size == 0:
        return pa.array([], pa.int64())
    read = pa_csv.read_csv(
        str(psi_output),
        convert_options=pa_csv.ConvertOptions(
            include_columns=[ROW_COLUMN], column_types={ROW_COLUMN: pa.int64()}
        ),
    )
    return read.column(ROW_COLUMN).combine_chunks()


def output_table(prepared: PreparedInput, matched: Any, *, join: str, fold_repeats: bool) -> Any:
    """The receiver's output: its own matched rows in aligned order (and, for `left`, the rest)."""
    if fold_repeats:
        matched = pc.unique(matched)  # first occurrence order
    table = prepared.table
    out = table.take(matched)
    if join != "left":
        return out
    all_rows = row_numbers(table.num_rows)
    unmatched = pc.and_(prepared.kept, pc.invert(pc.is_in(all_rows, value_set=matched)))
    rest = table.filter(unmatched)
    out = out.append_column(MATCH_COLUMN, pa.repeat(True, out.num_rows))
    rest = rest.append_column(MATCH_COLUMN, pa.repeat(False, rest.num_rows))
    return pa.concat_tables([out, rest])
