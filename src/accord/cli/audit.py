"""`accord audit verify`: recompute the node's hash-chained audit log and say whether it is intact."""

from __future__ import annotations

import typer

from accord.cli.common import NodeDirOption, client_for, errors_reported, fail, stdout_console
from accord.errors import ErrorCode

app = typer.Typer(help="The node's tamper-evident audit log.", no_args_is_help=True)


@app.command()
def verify(directory: NodeDirOption = None) -> None:
    """Check every link of the audit chain; exit 1 naming the first broken record."""
    with errors_reported(), client_for(directory) as client:
        report = client.audit_verify()
    count = int(report.get("records") or 0)
    records = f"{count} record{'' if count == 1 else 's'}"
    if report.get("ok"):
        stdout_console().print(f"audit chain OK: {records}, head {report.get('head') or '-'}", markup=False)
        return
    seq = report.get("first_broken_seq")
    where = f" at record seq {seq}" if seq is not None else ""
    fail(
        f"audit chain BROKEN{where}: {report.get('reason') or 'no reason given'} ({records} checked)",
        code=ErrorCode.AUDIT_CHAIN_BROKEN,
    )
