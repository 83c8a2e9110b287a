"""`accord job approve|reject|stop|suspend|restart|cancel|delete NAME`: act on a job at any party.

- `approve` / `reject` decide a job that awaits this participant's approval (nodes with
  `enable_approval = true`); the decision is reported to the initiator, which starts the job once every
  participant approved, or ends it in ApprovalReject with the reason.
- `stop`, `suspend`, `restart`, `cancel` and `delete` may be issued at the initiator or at any
  participant (then they are forwarded to the initiator, which applies them everywhere).  Kuscia's rules
  hold: only a Running job can be suspended (error 11210), only a Failed or Suspended job restarted
  (error 11211).

Each command prints one line saying what happened, e.g. `job psi: Suspended (stage Suspend v2, by bob)`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from accord.cli.common import NodeDirOption, client_for, errors_reported, stdout_console
from accord.client.jobs import approve_job, delete_job, job_command, reject_job

app = typer.Typer(
    help="Approve, reject, stop, suspend, restart, cancel or delete a job.", no_args_is_help=True
)

NameArgument = Annotated[str, typer.Argument(help="the job's name")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="why (kept in the audit log)")]


def _say(text: str) -> None:
    stdout_console().print(text, markup=False)


def _decision(doc: dict[str, Any], me_decided: str) -> str:
    status = doc.get("status") or {}
    return f"job {doc['meta']['name']}: {me_decided} (job is {status.get('phase', '?')})"


@app.command()
def approve(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Approve a job awaiting this node's approval."""
    with errors_reported(), client_for(directory) as client:
        doc = approve_job(client, name, reason)
    _say(_decision(doc, "approved here"))


@app.command()
def reject(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Reject a job awaiting this node's approval."""
    with errors_reported(), client_for(directory) as client:
        doc = reject_job(client, name, reason)
    _say(_decision(doc, "rejected here"))


def _command(name: str, command: str, reason: str, directory: Any) -> None:
    with errors_reported(), client_for(directory) as client:
        result = job_command(client, name, command, reason)
    _print_result(result)


def _print_result(result: dict[str, Any]) -> None:
    stage = result.get("stage") or {}
    _say(
        f"job {result['job']}: {result['phase']} (stage {stage.get('stage')} v{stage.get('version')}, "
        f"by {stage.get('trigger') or '?'}; initiator {result.get('initiator')})"
    )


@app.command()
def stop(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Stop a job: running tasks are stopped at every party and the job fails."""
    _command(name, "stop", reason, directory)


@app.command()
def suspend(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Suspend a Running job (restart it later)."""
    _command(name, "suspend", reason, directory)


@app.command()
def restart(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Restart a Failed or Suspended job: tasks that did not succeed run again."""
    _command(name, "restart", reason, directory)


@app.command()
def cancel(name: NameArgument, reason: ReasonOption = "", directory: NodeDirOption = None) -> None:
    """Cancel a job for good."""
    _command(name, "cancel", reason, directory)


@app.command()
def delete(name: NameArgument, directory: NodeDirOption = None) -> None:
    """Delete a job at every party."""
    with errors_reported(), client_for(directory) as client:
        result = delete_job(client, name)
    _print_result(result)
