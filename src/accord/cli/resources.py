"""`accord apply | get | describe | delete`: the resource commands, each one API call (two for describe).

`KIND` accepts every spelling the node does (`jobs`, `job`, `Job`, `routes` ...); it is resolved here
first so an unknown kind fails before any network call, and so tables pick the kind's columns.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from accord.cli.common import NodeDirOption, client_for, errors_reported, fail, stdout_console
from accord.cli.output import OutputFormat, print_documents, print_table
from accord.errors import ErrorCode
from accord.resources.registry import resolve_kind

RECENT_AUDIT_RECORDS = 10

KindArgument = Annotated[str, typer.Argument(help="kind: job, task, domain, route, appimage, data, ...")]


def _read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror or exc}", code=ErrorCode.INVALID_ARGUMENT)


def apply(
    file: Annotated[str, typer.Option("--filename", "-f", help="YAML/JSON file to apply; '-' reads stdin")],
    directory: NodeDirOption = None,
) -> None:
    """Create or update every object in a file (native or Kuscia YAML); nothing is written if one is bad."""
    text = _read_input(file)
    with errors_reported(), client_for(directory) as client:
        results = client.apply(text)
    out = stdout_console()
    for result in results:
        out.print(f"{result['kind'].lower()}/{result['name']} {result['action']}", markup=False)


def get(
    kind: KindArgument,
    name: Annotated[str | None, typer.Argument(help="one object's name (default: list all)")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table, yaml or json")] = (
        OutputFormat.TABLE
    ),
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="label selector a=b,c!=d")] = None,
    directory: NodeDirOption = None,
) -> None:
    """Show one object or list a kind."""
    with errors_reported():
        canonical = resolve_kind(kind)
        with client_for(directory) as client:
            docs = [client.get(canonical, name)] if name else client.list(canonical, selector)["items"]
    print_documents(canonical, docs, output, single=name is not None)


def _audit_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records.sort(key=lambda r: int(r.get("spec", {}).get("seq", 0)))
    return records[-RECENT_AUDIT_RECORDS:]


def describe(
    kind: KindArgument,
    name: Annotated[str, typer.Argument(help="the object's name")],
    directory: NodeDirOption = None,
) -> None:
    """Show an object in full (YAML) and the recent audit records about it."""
    with errors_reported():
        canonical = resolve_kind(kind)
        with client_for(directory) as client:
            doc = client.get(canonical, name)
            records = [
                r
                for r in client.list("AuditRecord")["items"]
                if r.get("spec", {}).get("target_kind") == canonical
                and r.get("spec", {}).get("target_name") == name
            ]
    typer.echo(yaml.safe_dump(doc, sort_keys=False).rstrip("\n"))
    typer.echo("")
    out = stdout_console()
    if not records:
        out.print("audit: no records", markup=False)
        return
    out.print(f"audit (last {min(len(records), RECENT_AUDIT_RECORDS)} of {len(records)}):", markup=False)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("SEQ", "TIME", "ACTOR", "ACTION", "VERSION"):
        table.add_column(header, no_wrap=True)
    for record in _audit_rows(records):
        spec = record.get("spec", {})
        table.add_row(
            str(spec.get("seq", "")),
            str(spec.get("time", "")),
            str(spec.get("actor", "")),
            str(spec.get("action", "")),
            str(spec.get("target_version", "")),
        )
    print_table(table)


def delete(
    kind: KindArgument,
    name: Annotated[str, typer.Argument(help="the object's name")],
    resource_version: Annotated[
        int | None, typer.Option("--resource-version", min=1, help="delete only if still at this version")
    ] = None,
    directory: NodeDirOption = None,
) -> None:
    """Delete an object (deleting a job deletes its tasks)."""
    with errors_reported():
        canonical = resolve_kind(kind)
        with client_for(directory) as client:
            client.delete(canonical, name, resource_version)
    stdout_console().print(f"{canonical.lower()}/{name} deleted", markup=False)
