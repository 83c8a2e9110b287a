"""`accord logs TASK [--follow]`: print a task's engine log as it is written.

Chunks are written through unchanged (no rich, no re-wrapping) so the output is exactly the file's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from accord.cli.common import NodeDirOption, client_for, errors_reported


def logs(
    task: Annotated[str, typer.Argument(help="the task's name (e.g. <job>-<alias>)")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the task ends")] = False,
    directory: NodeDirOption = None,
) -> None:
    """Print a task's engine log."""
    with errors_reported(), client_for(directory) as client:
        for chunk in client.logs(task, follow=follow):
            typer.echo(chunk, nl=False)
