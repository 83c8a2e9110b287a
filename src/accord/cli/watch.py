"""`accord watch KIND`: print changes as they happen, one line per event.

Without `--since` the command lists the kind first and prints each existing object as ADDED (what a
Kubernetes watch without a resource version does), then watches from the list's revision, so nothing
is missed between the two and compacted history never matters.  With `--since N` it replays the node's
retained history after revision N (`Gone` if it is older than the history: drop `--since`).
`--max-events` stops after that many events, for scripts and tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any

import typer

from accord.cli.common import NodeDirOption, client_for, errors_reported
from accord.client import AccordClient
from accord.resources.registry import resolve_kind


class WatchFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _events(
    client: AccordClient, kind: str, since: int | None, selector: str | None
) -> Iterator[dict[str, Any]]:
    if since is None:
        listing = client.list(kind, selector)
        for doc in listing["items"]:
            meta = doc.get("meta", {})
            yield {
                "type": "ADDED",
                "revision": meta.get("resource_version", 0),
                "kind": kind,
                "name": meta.get("name", ""),
                "object": doc,
            }
        since = int(listing["revision"])
    yield from client.watch(kind, since=since, selector=selector)


def format_event(event: dict[str, Any]) -> str:
    obj = event.get("object") or {}
    status = obj.get("status") if isinstance(obj, dict) else None
    phase = status.get("phase", "") if isinstance(status, dict) else ""
    line = f"{event.get('type', ''):<9} {str(event.get('kind', '')).lower()}/{event.get('name', '')}"
    if phase:
        line += f"  {phase}"
    return f"{line}  (revision {event.get('revision', '')})"


def watch(
    kind: Annotated[str, typer.Argument(help="kind to watch: job, task, route, ...")],
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="label selector a=b,c!=d")] = None,
    since: Annotated[
        int | None, typer.Option("--since", min=0, help="replay history after this revision")
    ] = None,
    output: Annotated[WatchFormat, typer.Option("--output", "-o", help="text or json")] = WatchFormat.TEXT,
    max_events: Annotated[int | None, typer.Option("--max-events", min=1, help="stop after N events")] = None,
    directory: NodeDirOption = None,
) -> None:
    """Print changes to a kind as they happen (Ctrl-C to stop)."""
    with errors_reported():
        canonical = resolve_kind(kind)
        with client_for(directory) as client:
            seen = 0
            events = _events(client, canonical, since, selector)
            try:
                for event in events:
                    typer.echo(json.dumps(event) if output is WatchFormat.JSON else format_event(event))
                    seen += 1
                    if max_events is not None and seen >= max_events:
                        break
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
