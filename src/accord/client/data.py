"""Data calls of the Python SDK: register a file, list DomainData, read the first rows of one.

Functions over an `AccordClient` rather than methods on it, so the data group stays in its own module
(`AccordClient` is shared by every group).  They return the API's JSON documents as they are.

A path is resolved to an absolute path *here*, on the caller's side: the node resolves paths on its own
machine and in its own working directory, which is not the user's shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accord.client.http import AccordClient


def add_data(
    client: AccordClient,
    name: str,
    path: Path | str,
    file_format: str | None = None,
    *,
    link: bool = False,
    column_types: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register the file at `path` as DomainData `name`; returns the created DomainData."""
    body: dict[str, Any] = {
        "name": name,
        "path": str(Path(path).expanduser().resolve()),
        "link": link,
        "column_types": dict(column_types or {}),
    }
    if file_format:
        body["format"] = file_format.lower()
    return client._json("POST", "/v1/data", json=body)


def list_data(client: AccordClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client._json("GET", "/v1/data")["items"]
    return items


def get_data(client: AccordClient, name: str) -> dict[str, Any]:
    return client._json("GET", f"/v1/data/{name}")


def head_data(client: AccordClient, name: str, rows: int = 10) -> dict[str, Any]:
    """`{"name", "columns": [{name, type, ...}], "rows": [[...], ...]}`."""
    return client._json("GET", f"/v1/data/{name}/head", params={"rows": rows})
