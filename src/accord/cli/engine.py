"""`accord engine install NAME | list`: the engine environments of this machine (no node involved).

Heavy engines (SPU) run from their own Python environment (`accord.runtimes.engines`), installed once per
machine under `$ACCORD_ENGINES_DIR` (default `~/.local/share/accord/engines`) and shared by every node
on it.  `install` is idempotent and atomic: it prints each step and pip's lines as they come, and a
failed install leaves nothing behind.  This is the one command group that works on local files rather
than through a node's API, because the environment belongs to the machine, not to a node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from accord.cli.common import errors_reported, stderr_console, stdout_console
from accord.runtimes.engines import ENGINES_DIR_ENV, engines_dir, install_engine, list_engines

app = typer.Typer(help="Engine environments of this machine (e.g. SPU): install, list.", no_args_is_help=True)

EnginesDirOption = Annotated[
    Path | None,
    typer.Option(
        "--engines-dir",
        envvar=ENGINES_DIR_ENV,
        help="where engine environments live (default ~/.local/share/accord/engines)",
        show_default=False,
    ),
]

_PIP_STEPS = ("Collecting", "Downloading", "Installing", "Successfully", "ERROR", "WARNING: Retrying")
"""The lines of pip's output shown without --verbose: what is being fetched and installed, and errors."""


@app.command()
def install(
    name: Annotated[str, typer.Argument(help="the engine to install, e.g. spu")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if it is installed")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show every line pip prints")] = False,
    directory: EnginesDirOption = None,
) -> None:
    """Create the engine's own environment (idempotent; e.g. `accord engine install spu`)."""
    err = stderr_console()

    def say(line: str) -> None:
        err.print(line, markup=False, highlight=False)

    def tool(line: str) -> None:
        if verbose or line.lstrip().startswith(_PIP_STEPS):
            err.print(f"  {line.strip()}", style="dim", markup=False, highlight=False)

    with errors_reported():
        installed = install_engine(name, root=directory, force=force, say=say, tool_output=tool)
    stdout_console().print(
        f"engine {installed.name} {installed.version}: {installed.path}", markup=False, highlight=False
    )


@app.command(name="list")
def list_(directory: EnginesDirOption = None) -> None:
    """Engines this Accord can run from their own environment, and whether they are installed."""
    rows = list_engines(directory)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("NAME", "VERSION", "STATUS", "PACKAGES", "PATH"):
        table.add_column(column, no_wrap=column != "PACKAGES")
    for row in rows:
        if row.installed is not None:
            packages = row.installed.packages
            shown = ", ".join(f"{k} {v}" for k, v in packages.items() if k != row.name)
            status = "installed"
        else:
            shown = ""
            status = "not installed" if not row.path.exists() else f"broken: {row.problem}"
        table.add_row(row.name, row.version, status, shown, str(row.path))
    out = stdout_console()
    out.print(table)
    if not any(r.installed for r in rows):
        where = directory or engines_dir()
        out.print(f"(engines dir: {where}; install one with `accord engine install spu`)", markup=False)
