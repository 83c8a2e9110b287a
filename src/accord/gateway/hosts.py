"""Host names on both ports: `<service>.<domain>.svc` (Kuscia's convention), with an optional port.

One function parses them, so the egress port, the public port and CONNECT targets agree on what a Host
means.  Both labels must be DNS labels; anything else is a `BadRequest` naming the expected form.
"""

from __future__ import annotations

from accord.gateway.refusals import BadRequest
from accord.names import DNS_LABEL


def parse_service_host(host: bytes) -> tuple[str, str]:
    """`b"echo.bob.svc:8080"` -> `("echo", "bob")`."""
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        raise BadRequest(f"Host {text!r} is an address; use <service>.<domain>.svc")
    name = text.rsplit(":", 1)[0] if ":" in text else text
    name = name.rstrip(".")
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "svc" or not all(DNS_LABEL.match(p) for p in parts[:2]):
        raise BadRequest(f"Host {text!r} is not of the form <service>.<domain>.svc")
    return parts[0], parts[1]
