"""`create_app`: the node's local HTTP API as one FastAPI application over `Services`.

One module per route group (`node`, `resources`, `watch`, `tasks`) so the KusciaAPI-compatible routes
(`/api/v1/job/create` ...) can arrive as another module over the same services without touching these.
Auth is a router-level dependency: every group except `/healthz` and the engine's task report needs the
node token (`api/auth.py`).  Errors are rendered once by `api/errors.py`.  OpenAPI is served at
`/openapi.json`, interactive docs at `/docs`.  The node calls `close_streams(app)` as it begins to stop,
so open watches end at once instead of holding the shutdown for uvicorn's whole grace period.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

import accord
from accord.api import data, jobs, kuscia_jobs, node, resources, tasks, watch
from accord.api.auth import require_node_token
from accord.api.errors import install_error_handlers
from accord.api.streams import StreamCloser
from accord.services import Services
from accord.settings import NodeSettings

WATCH_HEARTBEAT_SECONDS = 15.0


def create_app(
    services: Services,
    settings: NodeSettings,
    token: str,
    *,
    watch_heartbeat_seconds: float = WATCH_HEARTBEAT_SECONDS,
) -> FastAPI:
    app = FastAPI(
        title=f"Accord node API ({settings.domain})",
        version=accord.__version__,
        description=(
            "The local API of one Accord node. Send the node's token (the file `token` in the node "
            "directory) in the `Token` header. Errors are `{code, message}` with Kuscia's code ranges."
        ),
    )
    install_error_handlers(app)
    closer = StreamCloser()
    app.state.streams = closer
    authenticated = [Depends(require_node_token(token))]
    app.include_router(node.build_public_router(settings))
    app.include_router(node.build_router(services), dependencies=authenticated)
    app.include_router(resources.build_router(services), dependencies=authenticated)
    app.include_router(data.build_router(services.data), dependencies=authenticated)
    app.include_router(
        watch.build_router(services, closer, heartbeat_seconds=watch_heartbeat_seconds),
        dependencies=authenticated,
    )
    app.include_router(tasks.build_logs_router(services, closer), dependencies=authenticated)
    app.include_router(tasks.build_report_router(services))
    # Jobs: native commands (/v1/jobs/...) and KusciaAPI's job routes (/api/v1/job/...).
    app.include_router(jobs.build_router(services), dependencies=authenticated)
    app.include_router(
        kuscia_jobs.build_router(services, closer, heartbeat_seconds=watch_heartbeat_seconds),
        dependencies=authenticated,
    )
    return app


def close_streams(app: FastAPI) -> None:
    """End every open watch and log follow of `app` now; the node calls this when it starts to stop."""
    closer = getattr(app.state, "streams", None)
    if isinstance(closer, StreamCloser):
        closer.close()
