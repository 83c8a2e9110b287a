"""Benchmark the built-in PSI engine: two engine processes on loopback, unpinned and pinned.

    .venv/bin/python bench/psi_builtin.py --rows 1000000 [--overlap 0.5] [--workers N] [--modes free,pinned]

Generates two CSV tables (`id,age` and `id,score`, ids shaped like `u004f8c1ec819_845545`, the given
overlap, rows shuffled, fixed seed), runs `python -m accord.engines.psi` for alice and bob with the full
engine contract, and prints per run: wall time, µs per element (wall / rows), each party's CPU time
and peak RSS.  RSS and CPU are sampled from /proc every 50 ms over each engine's whole process tree
(engine + fork server + mask workers), so the peak RSS is the tree's summed resident memory, sampled.
"pinned" runs alice under `taskset -c 0` and bob under `taskset -c 1` (one core each; the engine then
uses one worker).  Every run is checked against a Python set intersection and for row alignment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv

PARTIES = ("alice", "bob")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate(directory: Path, rows: int, overlap: float, seed: int) -> int:
    rng = random.Random(seed)
    shared = int(rows * overlap)
    total = 2 * rows - shared
    ids = [f"u{rng.getrandbits(48):012x}_{i}" for i in range(total)]
    tables = {"alice": ids[:rows], "bob": ids[rows - shared : rows - shared + rows]}
    for party, column in (("alice", "age"), ("bob", "score")):
        chosen = tables[party]
        rng.shuffle(chosen)
        with (directory / f"{party}.csv").open("w") as fh:
            fh.write(f"id,{column}\n")
            fh.writelines(f"{key},{rng.randint(0, 999)}\n" for key in chosen)
    return shared


@dataclass
class Tree:
    """Resident memory and CPU of a process and all its descendants, sampled from /proc."""

    root: int
    peak_rss: int = 0
    cpu: dict[int, float] = field(default_factory=dict)

    def sample(self, parents: dict[int, int]) -> None:
        members = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in members and pid not in members:
                    members.add(pid)
                    changed = True
        rss = 0
        for pid in members:
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    rss += int(fh.read().split()[1]) * PAGE
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
            except (OSError, IndexError, ValueError):
                continue
        self.peak_rss = max(self.peak_rss, rss)


def process_parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def run(data: Path, work: Path, *, pinned: bool, workers: int | None, timeout: float) -> dict[str, object]:
    ports = {p: free_port() for p in PARTIES}
    config: dict[str, object] = {
        "protocol": "ECDH",
        "engine": "builtin",
        "inputs": {p: {"path": str(data / f"{p}.csv"), "keys": ["id"]} for p in PARTIES},
        "receivers": list(PARTIES),
        "timeout_s": timeout,
    }
    if workers is not None:
        config["workers"] = workers
    cluster = {
        "parties": [
            {"name": p, "role": "", "services": [{"portName": "psi", "endpoints": [f"127.0.0.1:{ports[p]}"]}]}
            for p in PARTIES
        ]
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    for index, party in enumerate(PARTIES):
        directory = work / party
        directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCORD_", "TASK_", "KUSCIA_"))}
        env.update(
            TASK_ID="bench-psi",
            TASK_INPUT_CONFIG=json.dumps(config),
            TASK_CLUSTER_DEFINE=json.dumps({**cluster, "selfPartyIdx": index}),
            ALLOCATED_PORTS=json.dumps({"ports": [{"name": "psi", "port": ports[party]}]}),
            KUSCIA_DOMAIN_ID=party,
            ACCORD_WORK_DIR=str(directory),
        )
        command = [sys.executable, "-m", "accord.engines.psi"]
        if pinned:
            command = ["taskset", "-c", str(index), *command]
        procs[party] = subprocess.Popen(
            command,
            env=env,
            cwd=directory,
            stdout=(directory / "stdout.log").open("wb"),
            stderr=(directory / "stderr.log").open("wb"),
        )
    outcome = watch(procs, timeout, started=started)
    trees, wall = outcome["trees"], outcome["wall_s"]
    for party in PARTIES:
        if procs[party].returncode != 0:
            raise SystemExit(f"{party} failed: {(work / party / 'stderr.log').read_text()}")
    results = {p: json.loads((work / p / "result.json").read_text()) for p in PARTIES}
    return {"wall_s": wall, "trees": trees, "results": results}


def watch(
    procs: dict[str, subprocess.Popen[bytes]],
    timeout: float,
    extra: dict[str, int] | None = None,
    *,
    started: float | None = None,
) -> dict[str, Any]:
    """Wait for `procs`, sampling each one's process tree (and the `extra` pids' trees) every 50 ms;
    the clock starts at `started` (default: now)."""
    trees = {name: Tree(proc.pid) for name, proc in procs.items()}
    others = {name: Tree(pid) for name, pid in (extra or {}).items()}
    started = time.monotonic() if started is None else started
    while any(proc.poll() is None for proc in procs.values()):
        if time.monotonic() - started > timeout:
            for proc in procs.values():
                proc.kill()
            raise SystemExit("benchmark run timed out")
        parents = process_parents()
        for name, proc in procs.items():
            if proc.poll() is None:
                trees[name].sample(parents)
        for tree in others.values():
            tree.sample(parents)
        time.sleep(0.05)
    return {"wall_s": time.monotonic() - started, "started": started, "trees": trees, "others": others}


def check_outputs(paths: dict[str, Path], data: Path, expected: int) -> None:
    columns = {p: pa_csv.read_csv(paths[p]).column("id") for p in PARTIES}
    if not columns["alice"].equals(columns["bob"]):
        raise SystemExit(f"outputs are not aligned: {paths}")
    alice = set(pa_csv.read_csv(data / "alice.csv").column("id").to_pylist())
    bob = set(pa_csv.read_csv(data / "bob.csv").column("id").to_pylist())
    truth = alice & bob
    got = columns["alice"].to_pylist()
    if set(got) != truth or len(got) != len(truth) or len(truth) != expected:
        raise SystemExit(f"wrong intersection: {len(got)} rows, expected {len(truth)}")


def check(work: Path, data: Path, expected: int) -> None:
    check_outputs({p: work / p / "output.csv" for p in PARTIES}, data, expected)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="free,pinned", help="comma-separated: free, pinned")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="psi-bench-"))
    try:
        data = root / "data"
        data.mkdir()
        t0 = time.monotonic()
        shared = generate(data, args.rows, args.overlap, args.seed)
        print(f"generated 2 x {args.rows} rows, {shared} shared, in {time.monotonic() - t0:.1f} s ({root})")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        header = (
            f"{'mode':<8} {'wall s':>7} {'µs/elem':>8} | {'party':<6} {'CPU s':>7} {'CPU µs/elem':>11} "
            f"{'peak RSS MB (tree)':>18} {'main RSS MB':>11} {'workers':>7} {'intersection':>12}"
        )
        print(header)
        print("-" * len(header))
        for mode in args.modes.split(","):
            work = root / mode
            outcome = run(data, work, pinned=mode == "pinned", workers=args.workers, timeout=args.timeout)
            check(work, data, shared)
            wall = float(outcome["wall_s"])  # type: ignore[arg-type]
            for i, party in enumerate(PARTIES):
                tree = outcome["trees"][party]  # type: ignore[index]
                result = outcome["results"][party]  # type: ignore[index]
                cpu = sum(tree.cpu.values())
                lead = f"{mode:<8} {wall:>7.1f} {wall * 1e6 / args.rows:>8.1f}" if i == 0 else " " * 25
                print(
                    f"{lead} | {party:<6} {cpu:>7.1f} {cpu * 1e6 / args.rows:>11.1f} "
                    f"{tree.peak_rss / 2**20:>18.0f} {result['main_peak_rss_mb']:>11.0f} "
                    f"{result['workers']:>7} {result['intersection_rows']:>12}"
                )
        print(f"load average at the end {os.getloadavg()[0]:.2f}; all runs correct and aligned")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
