"""Rendering resources for people (tables) and for programs (YAML, JSON).

Tables are kubectl-like: NAME, the kind's PHASE (or STATUS) when it has one, kind-specific columns
(a Job's tasks done/total, a Task's progress, a route's endpoints), and AGE.  The columns are data, one
list per kind, so adding a kind is adding a row here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer
import yaml
from rich.table import Table

from accord.cli.common import stdout_console

Document = dict[str, Any]
Column = tuple[str, Callable[[Document], str]]


class OutputFormat(StrEnum):
    TABLE = "table"
    YAML = "yaml"
    JSON = "json"


def _get(doc: Document, *path: str) -> Any:
    value: Any = doc
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def age(doc: Document, now: datetime | None = None) -> str:
    """`45s`, `12m`, `3h`, `5d` since `meta.created_at` ('' if unknown)."""
    created = _get(doc, "meta", "created_at")
    if not created:
        return ""
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def job_tasks(doc: Document) -> str:
    """`done/total`: tasks Succeeded out of the tasks in the spec."""
    total = len(_get(doc, "spec", "tasks") or [])
    phases = (_get(doc, "status", "task_status") or {}).values()
    done = sum(1 for phase in phases if phase == "Succeeded")
    return f"{done}/{total}"


def _progress(doc: Document) -> str:
    value = _get(doc, "status", "progress")
    return f"{float(value) * 100:.0f}%" if isinstance(value, int | float) else ""


def _field(*path: str) -> Callable[[Document], str]:
    return lambda doc: _text(_get(doc, *path))


def _joined(separator: str, *paths: tuple[str, ...]) -> Callable[[Document], str]:
    return lambda doc: separator.join(filter(None, (_text(_get(doc, *path)) for path in paths)))


_NAME: Column = ("NAME", _field("meta", "name"))
_PHASE: Column = ("PHASE", _field("status", "phase"))
_AGE: Column = ("AGE", age)

COLUMNS: dict[str, list[Column]] = {
    "Job": [_NAME, _PHASE, ("TASKS", job_tasks), ("INITIATOR", _field("spec", "initiator")), _AGE],
    "Task": [_NAME, ("JOB", _field("spec", "job")), _PHASE, ("PROGRESS", _progress), _AGE],
    "DomainRoute": [
        _NAME,
        ("SOURCE", _field("spec", "source")),
        ("DESTINATION", _field("spec", "destination")),
        ("ENDPOINT", _field("spec", "endpoint")),
        ("STATUS", _field("status", "phase")),
        _AGE,
    ],
    "Domain": [_NAME, ("ROLE", lambda d: _text(_get(d, "spec", "role")) or "self"), _AGE],
    "AppImage": [_NAME, ("IMAGE", _joined(":", ("spec", "image", "name"), ("spec", "image", "tag"))), _AGE],
    "AuditRecord": [
        _NAME,
        ("ACTOR", _field("spec", "actor")),
        ("ACTION", _field("spec", "action")),
        ("TARGET", _joined("/", ("spec", "target_kind"), ("spec", "target_name"))),
        _AGE,
    ],
    "Deployment": [_NAME, _PHASE, _AGE],
    "DomainDataSource": [_NAME, ("TYPE", _field("spec", "type")), _PHASE, _AGE],
    "DomainData": [_NAME, ("DATASOURCE", _field("spec", "datasource")), _PHASE, _AGE],
    "DomainDataGrant": [
        _NAME,
        ("DATA", _field("spec", "domaindata_id")),
        ("GRANTEE", _field("spec", "grant_domain")),
        _PHASE,
        _AGE,
    ],
}


def columns_for(kind: str) -> list[Column]:
    return COLUMNS.get(kind, [_NAME, _AGE])


def render_table(kind: str, docs: Sequence[Document]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    columns = columns_for(kind)
    for header, _ in columns:
        table.add_column(header, no_wrap=True)
    for doc in docs:
        table.add_row(*(extract(doc) for _, extract in columns))
    return table


def print_documents(kind: str, docs: Sequence[Document], fmt: OutputFormat, *, single: bool) -> None:
    """Print one object (`single`) or a list in the chosen format."""
    if fmt is OutputFormat.JSON:
        payload: Any = docs[0] if single else {"items": list(docs)}
        typer.echo(json.dumps(payload, indent=2, sort_keys=False))
    elif fmt is OutputFormat.YAML:
        if single:
            typer.echo(yaml.safe_dump(docs[0], sort_keys=False).rstrip("\n"))
        elif docs:
            typer.echo(yaml.safe_dump_all(list(docs), sort_keys=False).rstrip("\n"))
    elif not docs:
        stdout_console().print(f"no {kind} objects found", markup=False)
    else:
        print_table(render_table(kind, docs))


def print_table(table: Table) -> None:
    """Print a table without the trailing blanks rich pads its last column with (friendlier to grep/awk)."""
    console = stdout_console()
    with console.capture() as captured:
        console.print(table)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))
