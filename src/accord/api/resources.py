"""Native resource routes: apply a YAML/JSON stream, and create/list/get/replace/delete one object.

Thin by design: each route turns HTTP into a `ResourceService` call and the result into JSON; every
rule (validation, immutability, CAS, audit) lives in the service so the KusciaAPI adapters that come
later get identical behaviour.  `{kind}` accepts every spelling `resolve_kind` knows (`jobs`, `job`,
`Job`, `routes` ...).  Lists carry the store revision read *before* listing: watching from it
(`/v1/watch/{kind}?since=`) may repeat a change already in the list but never misses one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Request

from accord.api.errors import ERROR_RESPONSES
from accord.errors import ErrorCode, InvalidArgument
from accord.services import Services

ACTOR = "user"
MAX_APPLY_BYTES = 8 * 1024 * 1024

_APPLY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "one or more YAML or JSON documents (native or Kuscia), separated by `---`",
        "content": {"application/yaml": {"schema": {"type": "string"}}},
    }
}


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["resources"], responses=ERROR_RESPONSES)
    resources = services.resources

    @router.post("/apply", summary="Create or update every document of a stream", openapi_extra=_APPLY_BODY)
    async def apply(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_APPLY_BYTES:
            raise InvalidArgument(
                f"the document stream is {len(body)} bytes; at most {MAX_APPLY_BYTES} are accepted",
                code=ErrorCode.MALFORMED_DOCUMENT,
            )
        results = await resources.apply(body, ACTOR)
        return {"results": [r.model_dump() for r in results]}

    @router.post("/resources/{kind}", status_code=201, summary="Create one object")
    async def create(kind: str, doc: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return (await resources.create(doc, ACTOR, kind=kind)).to_document()

    @router.get("/resources/{kind}", summary="List objects of a kind")
    async def list_objects(
        kind: str,
        selector: str | None = Query(None, description="label selector: a=b,c!=d,e,!f"),
        domain: str | None = Query(None, description="only objects owned by this domain"),
    ) -> dict[str, Any]:
        revision = await resources.revision()
        items = await resources.list(kind, selector, domain)
        return {"items": [obj.to_document() for obj in items], "revision": revision}

    @router.get("/resources/{kind}/{name}", summary="Read one object")
    async def get(kind: str, name: str) -> dict[str, Any]:
        return (await resources.get(kind, name)).to_document()

    @router.put("/resources/{kind}/{name}", summary="Replace spec/labels (CAS on meta.resource_version)")
    async def replace(kind: str, name: str, doc: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return (await resources.replace(doc, ACTOR, kind=kind, name=name)).to_document()

    @router.delete("/resources/{kind}/{name}", summary="Delete one object (a Job takes its Tasks)")
    async def delete(
        kind: str,
        name: str,
        resource_version: int | None = Query(None, ge=1, description="delete only if still at it"),
    ) -> dict[str, Any]:
        deleted = await resources.delete(kind, name, resource_version, ACTOR)
        return deleted.to_document()

    return router
