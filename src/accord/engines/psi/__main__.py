"""`python -m accord.engines.psi`: run one party of a PSI task from the engine contract's environment.

Exit codes come from `errors.py` (0 ok, 2 config, 3 input, 4 peer, 1 anything else); on failure the
one line on stderr is the reason.  Progress logs go to stdout.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from accord.engines.psi.engine import run_task
from accord.engines.psi.errors import ConfigError, PsiError, Terminated
from accord.engines.sdk import EngineContractError, TaskContext


def _terminate(signum: int, frame: FrameType | None) -> None:
    # The runtime stops a cancelled task with SIGTERM: unwind normally, so the staged output is
    # discarded and the peer is told, instead of dying with a temp file left behind.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: let the cleanup run
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s psi %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        ctx = TaskContext.from_env()
        summary = run_task(ctx)
    except EngineContractError as exc:
        print(f"psi: {ConfigError.kind}: {exc}", file=sys.stderr)
        return ConfigError.exit_code
    except PsiError as exc:
        print(f"psi: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("psi: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        logging.getLogger("accord.engines.psi").exception("unexpected failure")
        print(f"psi: internal error: {exc!r}", file=sys.stderr)
        return 1
    if summary["receiver"]:
        print(f"psi: done: {summary['intersection_rows']} rows in the intersection -> {summary['output']}")
    else:
        print("psi: done (this party receives no result)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
