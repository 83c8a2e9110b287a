"""Where a PSI party's input comes from, and the key check both PSI engines (built-in, SPU) run first.

Under a node (`ACCORD_DATAMESH` set) a party reads only through DataMesh (`data`); without one (tests,
benchmarks) only a local file (`path`).  Key columns are checked against the input's schema before any
network traffic, so a missing column fails with the party and column named and the peer learns nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from accord.engines.dataio import DataMeshClient
from accord.engines.psi.config import PartyInput
from accord.engines.psi.datamesh import DataMeshTableReader
from accord.engines.psi.errors import ConfigError, InputError
from accord.engines.psi.io import TableReader, open_file_reader


def resolve_input(spec: PartyInput, party: str, datamesh: DataMeshClient | None) -> TableReader:
    """The reader for this party's input: DataMesh under a node, a local file otherwise."""
    if datamesh is not None:
        if spec.data is None:
            raise ConfigError(
                f"inputs.{party}.path: under a node (ACCORD_DATAMESH is set) data is read through DataMesh "
                "only; give 'data' (a DomainData id, e.g. from `accord data add`)"
            )
        return DataMeshTableReader(datamesh, spec.data, field=f"inputs.{party}.data")
    if spec.path is None:
        raise ConfigError(
            f"inputs.{party}.data: DomainData {spec.data!r} needs DataMesh, and ACCORD_DATAMESH is not set; "
            "give 'path' (a local CSV/Parquet file) instead"
        )
    return open_file_reader(spec.path, spec.format)


def check_keys(reader: TableReader, keys: list[str], party: str) -> None:
    names = [str(name) for name in reader.schema().names]
    for key in keys:
        if key not in names:
            raise InputError(
                f"inputs.{party}.keys: column {key!r} not found in {reader.description} "
                f"(columns: {', '.join(names) or 'none'})"
            )


def repeated_keys(party: str, keys: Sequence[str], repeated: int, valid_rows: int) -> InputError:
    """The `duplicates: error` refusal, the same from both engines (a count, never a key)."""
    return InputError(
        f"inputs.{party}.keys: {repeated} of {valid_rows} rows repeat a key of an earlier row "
        f'(key {", ".join(keys)} is not unique); set "duplicates" to "keep-first" or "keep-all"'
    )
