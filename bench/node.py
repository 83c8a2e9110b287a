"""Node figures: cold start to API ready, idle RSS, and single-node job latency.

Run: `.venv/bin/python bench/node.py [--runs 5]`. Prints the median cold start (process spawn until
`GET /healthz` answers), the node's resident memory after it has idled, and the submit-to-Succeeded
time of a one-task job on the built-in `hello` engine, side by side with the bare engine run time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodes import NodeProcess, eventually


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_engine_seconds() -> float:
    with tempfile.TemporaryDirectory() as work:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": work,
            "TASK_ID": "bare",
            "TASK_INPUT_CONFIG": json.dumps({"numbers": [1, 2, 3]}),
            "TASK_CLUSTER_DEFINE": json.dumps(
                {"parties": [{"name": "alice", "role": "", "services": []}], "selfPartyIdx": 0}
            ),
            "ALLOCATED_PORTS": json.dumps({"ports": []}),
            "KUSCIA_DOMAIN_ID": "alice",
        }
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "accord.engines.hello"], cwd=work, env=env, check=True, capture_output=True
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    starts: list[float] = []
    rss: list[float] = []
    job_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            node = NodeProcess(Path(tmp) / f"n{i}", "alice")
            t0 = time.perf_counter()
            node.start()
            starts.append(time.perf_counter() - t0)
            time.sleep(3)
            assert node.proc is not None
            rss.append(rss_mb(node.proc.pid))
            client = node.client
            t1 = time.perf_counter()
            client.create(
                {
                    "kind": "Job",
                    "meta": {"name": "bench"},
                    "spec": {
                        "initiator": "alice",
                        "tasks": [
                            {
                                "alias": "t",
                                "app_image": "hello",
                                "input_config": '{"numbers": [1, 2, 3]}',
                                "parties": [{"domain": "alice"}],
                            }
                        ],
                    },
                }
            )
            eventually(
                lambda c=client: c.get("Job", "bench")["status"]["phase"] == "Succeeded",  # type: ignore[misc]
                timeout=60,
                interval=0.01,
            )
            job_times.append(time.perf_counter() - t1)
            node.stop()
    bare = statistics.median(bare_engine_seconds() for _ in range(args.runs))
    job = statistics.median(job_times)
    print(f"cold start to API ready : median {statistics.median(starts):.2f} s (runs: {args.runs})")
    print(f"idle RSS after 3 s      : median {statistics.median(rss):.1f} MB")
    print(
        f"1-task job submit->done : median {job:.3f} s; bare engine run {bare:.3f} s; ratio {job / bare:.2f}x"
    )


if __name__ == "__main__":
    main()
