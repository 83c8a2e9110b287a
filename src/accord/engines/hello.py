"""`hello`: the smallest real engine, for the single-node demo and for testing the whole task path.

It honours the engine contract like any other engine (it imports only the SDK), does a little real work
and reports progress, so a user sees a job go from submitted to a result file:

    TASK_INPUT_CONFIG = {"numbers": [3, 1, 4, 1, 5]}
    -> result.json = {"count": 5, "sum": 14, "mean": 2.8, "min": 1, "max": 5, "task_id": ..., ...}

Test knobs in the same JSON: `"sleep": seconds` (spread over a few progress reports), `"exit_code": n`
(exit with n after writing the result), `"crash": true` (SIGKILL itself before writing anything).
Bad input is reported on stderr with exit code 2, the conventional "usage error".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from accord.engines.sdk import EngineContractError, TaskContext

USAGE_ERROR = 2


class InputError(ValueError):
    """TASK_INPUT_CONFIG is not what hello understands."""


def parse_input(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InputError(f"TASK_INPUT_CONFIG must be a JSON object, got {type(config).__name__}")
    numbers = config.get("numbers", [])
    if not isinstance(numbers, list) or not all(
        isinstance(n, int | float) and not isinstance(n, bool) for n in numbers
    ):
        raise InputError('"numbers" must be a list of numbers')
    sleep = config.get("sleep", 0)
    if not isinstance(sleep, int | float) or isinstance(sleep, bool) or sleep < 0:
        raise InputError('"sleep" must be a non-negative number of seconds')
    exit_code = config.get("exit_code", 0)
    if not isinstance(exit_code, int) or isinstance(exit_code, bool) or not 0 <= exit_code <= 255:
        raise InputError('"exit_code" must be an integer from 0 to 255')
    return {
        "numbers": numbers,
        "sleep": float(sleep),
        "exit_code": exit_code,
        "crash": bool(config.get("crash", False)),
    }


def summarise(numbers: list[float]) -> dict[str, Any]:
    if not numbers:
        return {"count": 0, "sum": 0, "mean": None, "min": None, "max": None}
    total = sum(numbers)
    return {
        "count": len(numbers),
        "sum": total,
        "mean": total / len(numbers),
        "min": min(numbers),
        "max": max(numbers),
    }


def run(ctx: TaskContext) -> int:
    try:
        params = parse_input(ctx.input_json())
    except (InputError, EngineContractError) as exc:
        print(f"hello: bad input: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(f"hello: task {ctx.task_id} in domain {ctx.domain_id} starts", flush=True)
    ctx.report_progress(0.1, "started")
    if params["crash"]:
        print("hello: crashing on purpose (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    steps = 4
    for step in range(steps):
        if params["sleep"]:
            time.sleep(params["sleep"] / steps)
        ctx.report_progress(0.1 + 0.8 * (step + 1) / steps, f"step {step + 1} of {steps}")
    result = summarise(params["numbers"])
    result.update({"task_id": ctx.task_id, "domain": ctx.domain_id})
    path = ctx.write_result("result.json", result)
    ctx.report_progress(1.0, "done")
    print(f"hello: wrote {path}: {json.dumps(result)}", flush=True)
    return int(params["exit_code"])


def main() -> int:
    try:
        ctx = TaskContext.from_env()
    except EngineContractError as exc:
        print(f"hello: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return run(ctx)


if __name__ == "__main__":
    sys.exit(main())
