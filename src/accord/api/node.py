"""Node-level routes: liveness (no auth, for probes and `accord node start` scripts), node info, audit.

`/healthz` answers without a token because load balancers and supervisors probe it without secrets;
it reveals only that a node of this domain is up.  Everything else needs the node token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from accord.api.errors import ERROR_RESPONSES
from accord.services import Services
from accord.settings import NodeSettings


def build_public_router(settings: NodeSettings) -> APIRouter:
    router = APIRouter(tags=["node"])

    @router.get("/healthz", summary="Liveness (no token needed)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "domain": settings.domain}

    return router


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["node"], responses=ERROR_RESPONSES)

    @router.get("/node", summary="Domain, version, store, revision, modules, isolation")
    async def node_info() -> dict[str, Any]:
        return await services.node_info()

    @router.get("/audit/verify", summary="Recompute the audit hash chain")
    async def audit_verify() -> dict[str, Any]:
        return (await services.audit.verify()).model_dump(mode="json")

    return router
