"""The Python SDK over a node's local API: `AccordClient` (sync, httpx); errors arrive typed."""

from accord.client.http import AccordClient

__all__ = ["AccordClient"]
