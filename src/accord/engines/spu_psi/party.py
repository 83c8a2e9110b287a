"""The party process: one party of a PSI task run by SPU's libpsi, under the guard (`__main__.py`).

Exit codes are the PSI engines' (`accord.engines.psi.errors`): 0 ok, 2 config, 3 input, 4 peer, 1
anything else, 143 stopped by SIGTERM; on failure the last line on stderr is the one-line reason.
libpsi logs to stdout (spdlog); the engine's own progress lines go there too.

The process always leaves with `os._exit` after flushing: a native thread may still be inside yacl or
libpsi (SIGTERM raised `Terminated` in the main thread while libpsi ran; a link that never came up),
and brpc's threads must not meet the interpreter's shutdown and the C++ static destructors.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from accord.engines.psi.errors import ConfigError, PsiError, Terminated
from accord.engines.sdk import EngineContractError, TaskContext

PREFIX = "spu-psi"


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: let the cleanup run
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def _fail(line: str, code: int) -> int:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return code


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s spu-psi %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from accord.engines.spu_psi.engine import run_task

        ctx = TaskContext.from_env()
        summary = run_task(ctx)
    except EngineContractError as exc:
        return _fail(f"{PREFIX}: {ConfigError.kind}: {exc}", ConfigError.exit_code)
    except PsiError as exc:
        return _fail(f"{PREFIX}: {exc.kind}: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        return _fail(f"{PREFIX}: interrupted", 130)
    except ImportError as exc:
        hint = "is this the SPU environment? run accord engine install spu"
        return _fail(f"{PREFIX}: internal error: {exc} ({hint})", 1)
    except Exception as exc:
        logging.getLogger("accord.engines.spu_psi").exception("unexpected failure")
        return _fail(f"{PREFIX}: internal error: {exc!r}", 1)
    if summary["receiver"]:
        rows, output = summary["intersection_rows"], summary["output"]
        print(f"{PREFIX}: done: {rows} rows in the intersection -> {output}")
    else:
        print(f"{PREFIX}: done (this party receives no result)")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
