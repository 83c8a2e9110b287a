"""`accord data add | list | head`: register files as DomainData and look at them.

`add` sends the file's *absolute* path; the node copies the file into its default data source and infers
the columns with their types (override one with `--type id=str`, e.g. to keep leading zeros of an id).
Cells are rendered as plain text (never as rich markup), because they are user data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from accord.cli.common import NodeDirOption, client_for, errors_reported, stdout_console, usage_error
from accord.cli.output import OutputFormat, age, print_documents, print_table
from accord.client.data import add_data, head_data, list_data

app = typer.Typer(
    help="DomainData: register files, list them, look at their first rows.", no_args_is_help=True
)

MAX_SHOWN_COLUMNS = 6


def _columns_summary(doc: dict[str, Any], limit: int = MAX_SHOWN_COLUMNS) -> str:
    columns = doc.get("spec", {}).get("columns") or []
    shown = [f"{c.get('name')}:{c.get('type')}" for c in columns[:limit]]
    if len(columns) > limit:
        shown.append(f"... (+{len(columns) - limit})")
    return ", ".join(shown)


def _parse_types(values: list[str]) -> dict[str, str]:
    types: dict[str, str] = {}
    for value in values:
        column, sep, kind = value.partition("=")
        if not sep or not column.strip() or not kind.strip():
            usage_error(f"--type {value!r}: use COLUMN=TYPE, e.g. --type id=str")
        types[column.strip()] = kind.strip()
    return types


@app.command()
def add(
    name: Annotated[
        str, typer.Argument(help="the DomainData id to create (lower-case letters, digits, '-')")
    ],
    path: Annotated[Path, typer.Option("--path", "-p", help="the CSV or Parquet file to register")],
    file_format: Annotated[
        str | None, typer.Option("--format", "-f", help="csv or parquet (default: from the file's suffix)")
    ] = None,
    link: Annotated[bool, typer.Option("--link", help="hard-link the file instead of copying it")] = False,
    types: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="override a column's type: COLUMN=TYPE")
    ] = None,
    directory: NodeDirOption = None,
) -> None:
    """Register a file as DomainData (copied into the node's default data source)."""
    column_types = _parse_types(types or [])
    with errors_reported(), client_for(directory) as client:
        doc = add_data(client, name, path, file_format, link=link, column_types=column_types)
    spec = doc.get("spec", {})
    count = len(spec.get("columns") or [])
    stdout_console().print(
        f"data/{name} registered: {count} column{'' if count == 1 else 's'} ({_columns_summary(doc)}), "
        f"{spec.get('file_format', '').lower()} in {spec.get('datasource')} at {spec.get('relative_uri')}",
        markup=False,
    )


@app.command("list")
def list_command(
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table, yaml or json")] = (
        OutputFormat.TABLE
    ),
    directory: NodeDirOption = None,
) -> None:
    """List the DomainData of this node."""
    with errors_reported(), client_for(directory) as client:
        docs = list_data(client)
    if output is not OutputFormat.TABLE or not docs:
        print_documents("DomainData", docs, output, single=False)
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("NAME", "FORMAT", "COLUMNS", "DATASOURCE", "VENDOR", "AGE"):
        table.add_column(header, no_wrap=True)
    for doc in docs:
        spec = doc.get("spec", {})
        table.add_row(
            *(
                Text(str(value))
                for value in (
                    doc.get("meta", {}).get("name", ""),
                    str(spec.get("file_format", "")).lower(),
                    _columns_summary(doc),
                    spec.get("datasource", ""),
                    spec.get("vendor", ""),
                    age(doc),
                )
            )
        )
    print_table(table)


@app.command()
def head(
    name: Annotated[str, typer.Argument(help="the DomainData id")],
    rows: Annotated[int, typer.Option("--rows", "-n", min=1, max=1000, help="how many rows")] = 10,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table or json")
    ] = OutputFormat.TABLE,
    directory: NodeDirOption = None,
) -> None:
    """Show the first rows of a DomainData."""
    with errors_reported(), client_for(directory) as client:
        result = head_data(client, name, rows)
    if output is not OutputFormat.TABLE:
        typer.echo(json.dumps(result, indent=2))
        return
    columns = result.get("columns") or []
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(Text(f"{column.get('name')}"), no_wrap=True)
    for row in result.get("rows") or []:
        table.add_row(*(Text("" if value is None else str(value)) for value in row))
    print_table(table)
    if not result.get("rows"):
        stdout_console().print(f"data/{name} has no rows", markup=False)
