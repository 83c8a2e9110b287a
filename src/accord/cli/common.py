"""What every command shares: finding the node, reporting errors, and the two consoles.

Errors are printed once, here, as `error [code]: message` in red on stderr, and the command exits 1;
a usage problem (no node directory given, conflicting options) exits 2, as click does for its own usage
errors.  Commands wrap their body in `with errors_reported():` rather than a decorator, because typer
reads each command's signature and annotations and a wrapper would hide them.

Consoles are created per call, not at import: the CLI test runner swaps `sys.stdout`/`sys.stderr`, and
a console bound at import would keep writing to the old streams.  Output that must stay parseable
(YAML, JSON, logs) bypasses rich entirely (`typer.echo`), so brackets in user data are never taken for
rich markup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from accord.client import AccordClient
from accord.errors import AccordError, ErrorCode

ENV_DIR = "ACCORD_DIR"
USAGE_EXIT_CODE = 2
ERROR_EXIT_CODE = 1

NodeDirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        "-d",
        envvar=ENV_DIR,
        help=f"the node directory (default: ${ENV_DIR})",
        show_default=False,
    ),
]


def stdout_console() -> Console:
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:  # piped or captured: never wrap table rows at an imagined 80 columns
        out = Console(highlight=False, soft_wrap=True, width=250)
    return out


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(code: int, message: str) -> None:
    stderr_console().print(f"error [{int(code)}]: {message}", style="red", markup=False)


def fail(
    message: str, *, code: int = ErrorCode.INVALID_ARGUMENT, exit_code: int = ERROR_EXIT_CODE
) -> NoReturn:
    print_error(code, message)
    raise typer.Exit(exit_code)


def usage_error(message: str) -> NoReturn:
    fail(message, code=ErrorCode.INVALID_ARGUMENT, exit_code=USAGE_EXIT_CODE)


@contextmanager
def errors_reported() -> Iterator[None]:
    """Turn an AccordError into `error [code]: message` + exit 1; Ctrl-C into exit 130."""
    try:
        yield
    except AccordError as exc:
        print_error(exc.code, exc.message)
        raise typer.Exit(ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def require_node_dir(directory: Path | None) -> Path:
    if directory is None:
        usage_error(f"no node directory: pass --dir DIR or set {ENV_DIR}")
    return directory.expanduser()


def client_for(directory: Path | None) -> AccordClient:
    """A client for the node in `directory` (or $ACCORD_DIR)."""
    return AccordClient.from_node_dir(require_node_dir(directory))
