"""`accord route add|list|delete`: how this node reaches each peer (endpoint, transit hop, path prefix).

`accord route add --to bob --endpoint https://bob.example:8443` stores a DomainRoute; the node's route
controller then performs the handshake over the public port and keeps the route's status current
(Ready / Unreachable / Unauthorized, with the reason).  `--wait SECONDS` waits for that first verdict and
exits 1 unless the route is Ready, which is what scripts want.

`--via carol` makes a transit route: traffic to bob goes through carol's gateway, end-to-end encrypted
between alice and bob.  The route to carol must exist and be direct; the endpoint of a transit route is
not used and may be omitted.  `--path-prefix /p` serves institutions whose L7 gateway routes by path.

`--auth token` is for peers behind an L7 gateway that terminates TLS: requests are signed with a route
token agreed in the handshake (rotated every `--token-rotation` seconds) instead of authenticated by
the client certificate.  The destination must grant it with the route on its side:
`accord route add --from alice --auth token` (run at bob) creates the inbound route `alice -> bob`.

Checks done here, before anything is sent: the peer must be a known Domain (`accord domain add` first:
the most common reason a Kuscia route never becomes ready), and a direct route needs an https endpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from accord.cli.common import (
    NodeDirOption,
    client_for,
    errors_reported,
    fail,
    require_node_dir,
    stdout_console,
)
from accord.cli.domain import items
from accord.cli.output import OutputFormat, age, print_documents, print_table
from accord.client import AccordClient
from accord.errors import ErrorCode, NotFound
from accord.names import check_dns_label
from accord.settings import load_settings

app = typer.Typer(help="Routes to peer domains and their health.", no_args_is_help=True)

KIND = "DomainRoute"
AUTH_TYPES = {"mtls": "MTLS", "token": "Token"}


def _own_domain(directory: Path | None) -> str:
    return load_settings(require_node_dir(directory)).domain


def _check_endpoint(endpoint: str) -> None:
    parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
    try:
        port = parts.port
    except ValueError as exc:
        fail(f"endpoint {endpoint!r}: {exc}", code=ErrorCode.ROUTE_INVALID)
    if parts.scheme != "https" or not parts.hostname:
        fail(
            f"endpoint {endpoint!r} must be https://HOST:PORT (the peer's public gateway port)",
            code=ErrorCode.ROUTE_INVALID,
        )
    if port is None:
        fail(
            f"endpoint {endpoint!r} has no port (the default public port is 8443)",
            code=ErrorCode.ROUTE_INVALID,
        )


def _require_domain(client: AccordClient, name: str, role: str) -> None:
    try:
        client.get("Domain", name)
    except NotFound:
        fail(
            f"{role} {name} is not a known domain: pin its certificate first with "
            f"`accord domain add {name} --cert {name}.crt`",
            code=ErrorCode.DOMAIN_NOT_FOUND,
        )


def _status(doc: dict[str, Any]) -> tuple[str, str]:
    status = doc.get("status") or {}
    return str(status.get("phase") or "Pending"), str(status.get("reason") or "")


@app.command()
def add(
    to: Annotated[str, typer.Option("--to", help="the destination domain")] = "",
    from_: Annotated[
        str, typer.Option("--from", help="grant: the inbound route FROM -> this domain (token routes)")
    ] = "",
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="https://HOST:PORT of the destination's public port")
    ] = "",
    via: Annotated[str, typer.Option("--via", help="reach the destination through this transit domain")] = "",
    auth: Annotated[str, typer.Option("--auth", help="mtls (default) or token")] = "mtls",
    path_prefix: Annotated[str, typer.Option("--path-prefix", help="path prefix for L7 gateways")] = "",
    name: Annotated[str, typer.Option("--name", help="route name (default: SOURCE-DESTINATION)")] = "",
    token_rotation: Annotated[
        int,
        typer.Option("--token-rotation", help="token routes: agree a new token every SECONDS (0 = never)"),
    ] = 0,
    wait: Annotated[
        float, typer.Option("--wait", help="wait up to SECONDS for the handshake; exit 1 unless Ready")
    ] = 0.0,
    directory: NodeDirOption = None,
) -> None:
    """Create a route to a peer; the node handshakes with it and tracks its health."""
    with errors_reported():
        if bool(to) == bool(from_):
            fail("give either --to DOMAIN (a route to a peer) or --from DOMAIN (a grant)", exit_code=2)
        if from_:
            _grant(from_, auth, name, directory)
            return
        for value, what in ((to, "destination"), (via, "transit domain")):
            if value:
                try:
                    check_dns_label(value, what)
                except ValueError as exc:
                    fail(str(exc), code=ErrorCode.ROUTE_INVALID)
        auth_type = AUTH_TYPES.get(auth.lower())
        if auth_type is None:
            fail(f"--auth must be one of {', '.join(AUTH_TYPES)}, not {auth!r}", code=ErrorCode.ROUTE_INVALID)
        if endpoint:
            _check_endpoint(endpoint)
        elif not via:
            fail(
                "a direct route needs --endpoint https://HOST:PORT (or use --via DOMAIN)",
                code=ErrorCode.ROUTE_INVALID,
            )
        me = _own_domain(directory)
        if to == me or via == me:
            fail(f"a route from {me} to itself makes no sense", code=ErrorCode.ROUTE_INVALID)
        route_name = name or f"{me}-{to}"
        doc = {
            "kind": KIND,
            "meta": {"name": route_name},
            "spec": {
                "source": me,
                "destination": to,
                "endpoint": endpoint,
                "transit": via,
                "path_prefix": path_prefix,
                "authentication_type": auth_type,
                "token_rotation_seconds": token_rotation,
            },
        }
        with client_for(directory) as client:
            _require_domain(client, to, "destination")
            if via:
                _require_domain(client, via, "transit")
            client.create(doc)
            how = f"through {via}" if via else endpoint
            stdout_console().print(f"route {route_name} created: {me} -> {to} ({how})", markup=False)
            if wait > 0:
                phase, reason = _wait_for_verdict(client, route_name, wait)
                stdout_console().print(
                    f"route {route_name}: {phase}{f' ({reason})' if reason else ''}", markup=False
                )
                if phase != "Ready":
                    raise typer.Exit(1)


def _grant(source: str, auth: str, name: str, directory: Path | None) -> None:
    """`--from alice`: the inbound route alice -> me, which lets alice authenticate by token."""
    try:
        check_dns_label(source, "source domain")
    except ValueError as exc:
        fail(str(exc), code=ErrorCode.ROUTE_INVALID)
    if auth.lower() != "token":
        fail("--from grants token authentication; add --auth token (mTLS peers need only their Domain)")
    me = _own_domain(directory)
    route_name = name or f"{source}-{me}"
    doc = {
        "kind": KIND,
        "meta": {"name": route_name},
        "spec": {"source": source, "destination": me, "authentication_type": "Token"},
    }
    with client_for(directory) as client:
        _require_domain(client, source, "source")
        client.create(doc)
    stdout_console().print(
        f"route {route_name} created: {source} may authenticate to {me} by token", markup=False
    )


def _wait_for_verdict(client: AccordClient, name: str, seconds: float) -> tuple[str, str]:
    deadline = time.monotonic() + seconds
    phase, reason = "Pending", ""
    while time.monotonic() < deadline:
        phase, reason = _status(client.get(KIND, name))
        if phase != "Pending":
            break
        time.sleep(0.2)
    return phase, reason or (
        "no verdict yet (is the node's route controller running?)" if phase == "Pending" else ""
    )


@app.command("list")
def list_(
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table, yaml or json")
    ] = OutputFormat.TABLE,
    directory: NodeDirOption = None,
) -> None:
    """Routes with their health: Ready, Unreachable or Unauthorized, and why."""
    with errors_reported(), client_for(directory) as client:
        docs = items(client.list(KIND))
    if output is not OutputFormat.TABLE or not docs:
        print_documents(KIND, docs, output, single=False)
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in ("NAME", "SOURCE", "DESTINATION", "VIA", "ENDPOINT", "STATUS", "REASON", "AGE"):
        table.add_column(header, no_wrap=header != "REASON")
    for doc in docs:
        spec = doc.get("spec") or {}
        phase, reason = _status(doc)
        table.add_row(
            str(doc["meta"]["name"]),
            str(spec.get("source", "")),
            str(spec.get("destination", "")),
            str(spec.get("transit") or "-"),
            str(spec.get("endpoint") or "-"),
            phase,
            reason,
            age(doc),
        )
    print_table(table)


@app.command()
def delete(
    name: Annotated[
        str, typer.Argument(help="route name (see `accord route list`)", show_default=False)
    ] = "",
    to: Annotated[str, typer.Option("--to", help="delete the route to this domain instead")] = "",
    directory: NodeDirOption = None,
) -> None:
    """Delete a route: traffic to its destination is refused from now on."""
    with errors_reported():
        if bool(name) == bool(to):
            fail("give either a route NAME or --to DOMAIN", code=ErrorCode.INVALID_ARGUMENT, exit_code=2)
        with client_for(directory) as client:
            if to:
                me = _own_domain(directory)
                matches = [
                    d["meta"]["name"]
                    for d in items(client.list(KIND))
                    if (d.get("spec") or {}).get("destination") == to
                    and (d.get("spec") or {}).get("source") == me
                ]
                if not matches:
                    fail(f"no route from {me} to {to}", code=ErrorCode.ROUTE_NOT_FOUND)
            else:
                matches = [name]
            for route_name in matches:
                client.delete(KIND, route_name)
                stdout_console().print(f"route {route_name} deleted", markup=False)
