"""Cross-domain job figures: submit -> every party's engine running, and many concurrent 2-party jobs.

Run: `.venv/bin/python bench/jobs.py [--runs 10] [--concurrent 50]`.  Starts three real nodes (alice, bob,
carol) on loopback, makes them partners (pinned certificates, routes both ways), then:

1. **Start latency**, for 2-party (alice+bob) and 3-party (alice+bob+carol) one-task jobs on the
   built-in `hello` engine: the time from the submit call returning until the initiator's task shows
   every party Running (each party's node reports it after launching its engine, so this includes the
   proposal, the all-or-nothing prepare round, the start round and the reports).  Median and p95.
2. **Concurrency**: `--concurrent` 2-party jobs submitted at once; every control message and every
   party's status goes through each node's single public port.  Reports failures (must be 0), the time
   until all finished, and the end-to-end median per job; once with an engine that needs no CPU
   (`sleep 1`: the orchestration's own cost) and once with `hello` (a Python engine that imports the
   SDK and reports progress 6 times: on a 2-core machine, 2 x N such engines compete for the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodes import NodeProcess, connect, eventually, one_task_job

from accord.client import AccordClient
from accord.client.jobs import submit_job

FINAL = ("Succeeded", "Failed", "ApprovalReject", "Cancelled")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def time_to_running(client: AccordClient, name: str, parties: list[str]) -> float:
    submit_job(client, one_task_job(name, parties, {"numbers": [1], "sleep": 3}))
    start = time.perf_counter()
    task = f"{name}-t"

    def all_running() -> bool:
        try:
            status = client.get("Task", task)["status"]
        except Exception:
            return False
        phases = [p["phase"] for p in status.get("parties", [])]
        if any(p == "Failed" for p in phases):
            raise AssertionError(f"{name}: {status.get('message')}")
        return len(phases) == len(parties) and all(p in ("Running", "Succeeded") for p in phases)

    eventually(all_running, timeout=60, interval=0.005, what=f"{name} running at every party")
    return time.perf_counter() - start


def concurrent_jobs(client_of: Any, count: int, app: str) -> tuple[int, float, list[float], list[str]]:
    names = [f"many-{app}-{i:03d}" for i in range(count)]
    submitted: dict[str, float] = {}
    errors: list[str] = []

    def submit(name: str) -> None:
        try:
            with client_of() as client:
                submit_job(
                    client, one_task_job(name, ["alice", "bob"], {"numbers": [1, 2], "sleep": 1}, app=app)
                )
            submitted[name] = time.perf_counter()
        except Exception as exc:  # a failure to submit counts as a failed job
            errors.append(f"{name}: submit failed: {exc!r}")

    start = time.perf_counter()
    threads = [threading.Thread(target=submit, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished: dict[str, float] = {}
    succeeded = 0
    with client_of() as client:
        deadline = time.monotonic() + 300
        while len(finished) + len(errors) < count and time.monotonic() < deadline:
            for job in client.list("Job")["items"]:
                name = job["meta"]["name"]
                if name in submitted and name not in finished and job["status"]["phase"] in FINAL:
                    finished[name] = time.perf_counter()
                    if job["status"]["phase"] == "Succeeded":
                        succeeded += 1
                    else:
                        errors.append(f"{name}: {job['status']['phase']}: {job['status']['message']}")
            time.sleep(0.2)
    total = time.perf_counter() - start
    missing = [n for n in submitted if n not in finished]
    errors.extend(f"{n}: not finished after 300 s" for n in missing)
    per_job = [finished[n] - submitted[n] for n in finished]
    return succeeded, total, per_job, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [
            NodeProcess(Path(tmp) / d, d, settings={"route_probe_seconds": 5.0})
            for d in ("alice", "bob", "carol")
        ]
        try:
            for node in nodes:
                node.start(wait=False)
            for node in nodes:
                node.wait_ready()
            connect(*nodes)
            alice = nodes[0].client
            for label, parties in (("2-party", ["alice", "bob"]), ("3-party", ["alice", "bob", "carol"])):
                time_to_running(alice, f"warm-{label}", parties)  # first job: imports, pools, caches
                times = [time_to_running(alice, f"lat-{label}-{i}", parties) for i in range(args.runs)]
                median, p95 = statistics.median(times) * 1000, percentile(times, 0.95) * 1000
                print(
                    f"{label} submit -> all engines running: median {median:.0f} ms, p95 {p95:.0f} ms "
                    f"(runs: {args.runs})",
                    flush=True,
                )
            for node in nodes[:2]:  # an engine that costs (almost) no CPU: the orchestration alone
                node.client.create(
                    {"kind": "AppImage", "meta": {"name": "sleeper"}, "spec": {"command": ["sleep", "1"]}}
                )
            for app, what in (("sleeper", "`sleep 1`"), ("hello", "hello, sleep 1 s + 6 progress reports")):
                ok, total, per_job, errors = concurrent_jobs(lambda: nodes[0].client, args.concurrent, app)
                median, p95 = statistics.median(per_job), percentile(per_job, 0.95)
                print(
                    f"{args.concurrent} concurrent 2-party jobs ({what}): {ok} succeeded, {len(errors)} "
                    f"failed; all done in {total:.1f} s; submit -> Succeeded median {median:.2f} s, "
                    f"p95 {p95:.2f} s",
                    flush=True,
                )
                for error in errors[:10]:
                    print("  ", error)
        finally:
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()
