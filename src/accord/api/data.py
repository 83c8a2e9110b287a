"""Data routes: register a file as DomainData, list DomainData, show the first rows of one.

Thin like every route module: HTTP in, one `DataService` call, JSON out; the rules live in the service
and in `accord.datamesh`.  The router carries no auth of its own: `create_app` includes it with the node
token dependency, as the other authenticated groups.

    POST /v1/data                       {"name", "path", "format"?: "csv"|"parquet", "link"?, "column_types"?}
    GET  /v1/data                       {"items": [DomainData...]}
    GET  /v1/data/{name}                DomainData
    GET  /v1/data/{name}/head?rows=10   {"name", "columns": [{name, type, ...}], "rows": [[...], ...]}

`path` is a path on the node's machine (the CLI sends it absolute); the file is copied into the default
data source, so later changes to it do not change the registered data (unless `link` asks for a hard link).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from accord.api.errors import ERROR_RESPONSES
from accord.services.data import DEFAULT_HEAD_ROWS, MAX_HEAD_ROWS, DataService

ACTOR = "user"


class AddDataRequest(BaseModel):
    name: str = Field(description="the DomainData id to create (a DNS label)")
    path: str = Field(description="absolute path of a CSV or Parquet file on the node's machine")
    format: Literal["csv", "parquet", "CSV", "PARQUET"] | None = Field(
        None, description="file format; default: from the file name's suffix"
    )
    link: bool = Field(False, description="hard-link the file instead of copying it (same file system only)")
    column_types: dict[str, str] = Field(
        default_factory=dict, description="override inferred types, e.g. {'id': 'str'}"
    )
    datasource: str = Field("default-data-source", description="the DomainDataSource to store it in")


def build_router(data: DataService) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["data"], responses=ERROR_RESPONSES)

    @router.post("/data", status_code=201, summary="Register a file as DomainData")
    async def add(request: AddDataRequest) -> dict[str, Any]:
        created = await data.add(
            request.name,
            request.path,
            request.format,
            datasource=request.datasource,
            link=request.link,
            column_types=request.column_types,
            actor=ACTOR,
        )
        return created.to_document()

    @router.get("/data", summary="List DomainData")
    async def list_data() -> dict[str, Any]:
        return {"items": [d.to_document() for d in await data.list()]}

    @router.get("/data/{name}", summary="Read one DomainData")
    async def get(name: str) -> dict[str, Any]:
        return (await data.get(name)).to_document()

    @router.get("/data/{name}/head", summary="The first rows of a DomainData")
    async def head(
        name: str,
        rows: int = Query(DEFAULT_HEAD_ROWS, ge=1, le=MAX_HEAD_ROWS, description="how many rows"),
    ) -> dict[str, Any]:
        result = await data.head(name, rows, actor=ACTOR)
        return result.model_dump(mode="json")

    return router
