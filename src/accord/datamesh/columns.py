"""Column types: Arrow types <-> the type names a DomainData records (Kuscia/SecretFlow spelling).

Why a fixed vocabulary: a DomainData's `columns` are read by people (`accord data list`), by peers (a grant
names columns) and by engines written for Kuscia, which expect SecretFlow's names (`str`, `int64`,
`float64`, `bool`).  Recording the type at registration also makes reads *stable*: Arrow's streaming CSV
reader infers types from the first block only and fails on a later block that disagrees, so DataMesh
reads every CSV with the registered types (`schema_from_columns`) instead of re-guessing per read.

Parquet may hold types without a short name (decimals, lists); they are recorded as Arrow prints them and
`arrow_type` refuses them, which is harmless because only CSV reads use the recorded types.

A column of nothing but empty cells infers as Arrow `null`; it is recorded as `str` (the only type that
reads it back without loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.data import DataColumn

# Spellings accepted in a DomainData's `columns[].type` besides Arrow's own aliases (`int64`, `date32`...).
_ALIASES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "integer": pa.int64(),
    "long": pa.int64(),
    "float": pa.float64(),
    "double": pa.float64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "str": pa.string(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
}


def type_name(arrow_type: pa.DataType) -> str:
    """The name recorded for an Arrow type: `str` for strings, `bool`, else Arrow's own (`int64`...)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type):
        return "str"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_floating(arrow_type):  # Arrow says "double"/"float"; SecretFlow says float64/float32
        return f"float{arrow_type.bit_width}"
    if pa.types.is_date32(arrow_type) or pa.types.is_date64(arrow_type):  # not "date32[day]"
        return str(arrow_type).split("[", 1)[0]
    return str(arrow_type)


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type for a recorded type name; `InvalidArgument` (11500) for an unknown one."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        return pa.type_for_alias(key)
    except (ValueError, KeyError) as exc:
        raise InvalidArgument(
            f"unknown column type {name!r}: use str, int64, float64, bool, date32 or another Arrow type name",
            code=ErrorCode.DATA_INVALID,
        ) from exc


def columns_from_schema(schema: pa.Schema, comments: Mapping[str, str] | None = None) -> list[DataColumn]:
    """The DomainData columns describing an Arrow schema (with optional per-column comments)."""
    notes = comments or {}
    return [
        DataColumn(
            name=field.name,
            type=type_name(field.type),
            comment=notes.get(field.name, ""),
            not_nullable=not field.nullable,
        )
        for field in schema
    ]


def schema_from_columns(columns: Iterable[DataColumn]) -> pa.Schema:
    """The Arrow schema a DomainData's recorded columns stand for."""
    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=not c.not_nullable) for c in columns])
