"""`accord`: the root command. It only wires the command groups together (Flower's `cli/app.py`).

One module per command group: `node` (init/start/status), `resources` (apply/get/describe/delete),
`watch`, `logs`, `audit`; `domain` and `route` come from the gateway's CLI modules.  Every command
finds its node by `--dir DIR` or `$ACCORD_DIR` and talks to it through `accord.client`; only
`node init`/`node start` reach into `accord.node`, lazily.
"""

from __future__ import annotations

from typing import Annotated

import typer

import accord
from accord.cli import audit, data, domain, engine, job, logs, node, resources, route, watch

app = typer.Typer(
    name="accord",
    help="Accord: cross-domain privacy-computing orchestration. One node per institution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"accord {accord.__version__} (protocol {accord.PROTOCOL_VERSION})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Accord command line."""


app.add_typer(node.app, name="node")
app.command()(resources.apply)
app.command()(resources.get)
app.command()(resources.describe)
app.command()(resources.delete)
app.command()(watch.watch)
app.command()(logs.logs)
app.add_typer(audit.app, name="audit")
app.add_typer(domain.app, name="domain")
app.add_typer(route.app, name="route")
app.add_typer(data.app, name="data")
app.add_typer(job.app, name="job")
app.add_typer(engine.app, name="engine")


def main() -> None:
    app()
