"""The node's HTTP API (FastAPI) over `accord.services`; `create_app` builds it."""

from accord.api.app import close_streams, create_app

__all__ = ["close_streams", "create_app"]
