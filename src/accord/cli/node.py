"""`accord node init|start|status`: create a node directory, run the node, ask a running node about itself.

`init` and `start` import `accord.node` inside the command: it pulls in the whole daemon (store drivers,
uvicorn, controllers), which every other command (`accord get` ...) should not pay for at start-up.
`status` goes through the API like every other command, so it shows what the running node reports,
including the ports it actually bound (a port configured as 0 is picked at start; the client finds the
API through the node's `run/endpoints.json`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from accord.cli.common import NodeDirOption, client_for, errors_reported, require_node_dir, stdout_console
from accord.settings import load_settings

app = typer.Typer(help="Create, run and inspect this domain's node.", no_args_is_help=True)


@app.command()
def init(
    domain: Annotated[str, typer.Option("--domain", help="this node's domain id (a DNS label)")],
    directory: NodeDirOption = None,
    api_port: Annotated[
        int | None, typer.Option("--api-port", min=0, max=65535, help="local API port")
    ] = None,
    gateway_port: Annotated[
        int | None, typer.Option("--gateway-port", min=0, max=65535, help="public mTLS port")
    ] = None,
    egress_port: Annotated[
        int | None, typer.Option("--egress-port", min=0, max=65535, help="loopback egress port")
    ] = None,
    datamesh_port: Annotated[
        int | None, typer.Option("--datamesh-port", min=0, max=65535, help="loopback data port")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing identity")] = False,
) -> None:
    """Create a node directory: config, domain key and certificate, API token."""
    node_dir = require_node_dir(directory)
    with errors_reported():
        from accord.node.bootstrap import init_node_dir

        settings = init_node_dir(
            domain=domain,
            directory=node_dir,
            api_port=api_port,
            gateway_port=gateway_port,
            egress_port=egress_port,
            datamesh_port=datamesh_port,
            force=force,
        )
        out = stdout_console()
        out.print(f"initialised node {settings.domain} in {settings.dir}", markup=False)
        api = settings.api_url if settings.api_port else "a free port picked at start (`accord node status`)"
        out.print(f"  API:         {api} (token in {settings.token_path})", markup=False)
        out.print(f"  certificate: {settings.cert_path}", markup=False)
        out.print(f"start it with: accord node start --dir {settings.dir}", markup=False)


@app.command()
def start(directory: NodeDirOption = None) -> None:
    """Run the node in the foreground until SIGTERM/SIGINT; exits with the node's exit code."""
    node_dir = require_node_dir(directory)
    with errors_reported():
        settings = load_settings(node_dir)
        from accord.node.daemon import run_node

        code = run_node(settings)
    raise typer.Exit(code)


def _modules(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{name}={state}" for name, state in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value) if value else "-"


@app.command()
def status(directory: NodeDirOption = None) -> None:
    """Ask the running node about itself (exit 1 if it is not running)."""
    with errors_reported(), client_for(directory) as client:
        info = client.node_info()
    rows = [
        ("domain", info.get("domain")),
        ("version", info.get("version")),
        ("pid", info.get("pid") or "-"),
        ("store", info.get("store")),
        ("revision", info.get("revision")),
        ("modules", _modules(info.get("modules"))),
        ("isolation", info.get("isolation") or "-"),
        ("api", info.get("api") or client.base_url),
        ("gateway", info.get("gateway") or "-"),
        ("egress", info.get("egress") or "-"),
        ("datamesh", info.get("datamesh") or "-"),
    ]
    out = stdout_console()
    for key, value in rows:
        out.print(f"{key + ':':<11}{value}", markup=False)
