"""`make demo`: a two-node network on this machine runs a real private set intersection end to end.

What it does, as two institutions' administrators and a data scientist would, all through the CLI:
1. `accord node init` + `accord node start` for alice and bob (separate processes, dirs and ports);
2. each pins the other's certificate (`accord domain add`) and creates a route (`accord route add`),
   waiting until the mutual-TLS handshake says Ready;
3. each registers its own table (`accord data add`): 100,000 rows, 40% of the ids shared, fixed seed;
4. alice submits a two-party PSI job written as a KusciaJob YAML (`accord apply -f`), and the demo shows
   the tasks' progress live until the job ends;
5. it prints the intersection size, where each party's output lives, and checks it against a plaintext
   intersection it computes itself (which no real party could do: it has both tables);
6. both nodes stop cleanly (SIGTERM).
Everything lives under `.demo/` in the repository (removed at the next run).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from accord.client import AccordClient

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
ACCORD = str(Path(sys.executable).with_name("accord"))
ROWS = 100_000
OVERLAP = 0.4
SEED = 20261121
JOB = "psi-demo"
FINAL = ("Succeeded", "Failed", "Cancelled", "ApprovalReject")
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.dir = DEMO / domain
        self.gateway_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def accord(self, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        console.print(f"[bold cyan]{self.domain}$ accord {' '.join(args)}[/]")
        env = {**os.environ, "ACCORD_DIR": str(self.dir)}
        proc = subprocess.run([ACCORD, *args], env=env, text=True, capture_output=True, timeout=180)
        if proc.stdout.strip() and not quiet:
            console.print(proc.stdout.rstrip())
        if proc.returncode != 0:
            console.print(f"[red]{proc.stderr.rstrip()}[/]")
            if check:
                raise SystemExit(f"demo failed: accord {' '.join(args)} exited {proc.returncode}")
        return proc

    def init(self) -> None:
        self.accord(
            "node", "init", "--domain", self.domain, "--dir", str(self.dir),
            "--api-port", str(free_port()), "--gateway-port", str(self.gateway_port),
            "--egress-port", str(free_port()), "--datamesh-port", str(free_port()),
        )  # fmt: skip

    def start(self) -> None:
        log = (DEMO / f"{self.domain}-node.log").open("wb")
        console.print(f"[bold cyan]{self.domain}$ accord node start[/] (log in .demo/{self.domain}-node.log)")
        self.proc = subprocess.Popen(
            [ACCORD, "node", "start", "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    @property
    def client(self) -> AccordClient:
        return AccordClient.from_node_dir(self.dir)

    def wait_ready(self, timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"demo failed: node {self.domain} exited with code {self.proc.returncode}")
            try:
                self.client.health()
                return time.monotonic() - start
            except Exception:
                time.sleep(0.05)
        raise SystemExit(f"demo failed: node {self.domain} did not become ready in {timeout} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
            console.print(f"node {self.domain} stopped (exit code {code})")
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            console.print(f"[red]node {self.domain} did not stop in 30 s: killed[/]")


def make_tables() -> tuple[Path, Path, set[str]]:
    """Two tables whose ids overlap in 40% of the rows; returns their paths and the true intersection."""
    rng = random.Random(SEED)
    shared = [f"u{rng.getrandbits(48):012x}" for _ in range(int(ROWS * OVERLAP))]
    only_a = [f"a{rng.getrandbits(48):012x}" for _ in range(ROWS - len(shared))]
    only_b = [f"b{rng.getrandbits(48):012x}" for _ in range(ROWS - len(shared))]
    ids_a, ids_b = shared + only_a, shared + only_b
    rng.shuffle(ids_a)
    rng.shuffle(ids_b)
    path_a, path_b = DEMO / "alice-customers.csv", DEMO / "bob-transactions.csv"
    with path_a.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "age"])
        w.writerows([i, rng.randint(18, 90)] for i in ids_a)
    with path_b.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "amount"])
        w.writerows([i, round(rng.uniform(1, 5000), 2)] for i in ids_b)
    return path_a, path_b, set(ids_a) & set(ids_b)


def job_yaml() -> str:
    config = {
        "protocol": "ECDH",
        "engine": "builtin",
        "inputs": {
            "alice": {"data": "customers", "keys": ["id"]},
            "bob": {"data": "transactions", "keys": ["id"]},
        },
        "receivers": ["alice", "bob"],
        "join": "inner",
    }
    return f"""apiVersion: kuscia.secretflow/v1alpha1
kind: KusciaJob
metadata:
  name: {JOB}
spec:
  initiator: alice
  scheduleMode: Strict
  maxParallelism: 1
  tasks:
    - alias: psi
      appImage: psi
      taskInputConfig: '{json.dumps(config)}'
      parties:
        - domainID: alice
        - domainID: bob
"""


def progress_table(job: dict[str, Any], tasks: list[dict[str, Any]]) -> Table:
    status = job.get("status") or {}
    table = Table(title=f"job {JOB}: {status.get('phase')}")
    for col in ("task", "phase", "progress", "parties", "message"):
        table.add_column(col)
    for task in tasks:
        st = task.get("status") or {}
        parties = ", ".join(f"{p['domain']}={p['phase']}" for p in st.get("parties") or [])
        table.add_row(
            task["meta"]["name"],
            str(st.get("phase")),
            f"{100 * float(st.get('progress') or 0):.0f}%",
            parties,
            str(st.get("message") or "")[:60],
        )
    return table


def main() -> int:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    t0 = time.monotonic()
    alice, bob = Node("alice"), Node("bob")
    try:
        for n in (alice, bob):
            n.init()
        for n in (alice, bob):
            n.start()
        for n in (alice, bob):
            console.print(f"node {n.domain} ready in {n.wait_ready():.2f} s")
        for a, b in ((alice, bob), (bob, alice)):
            a.accord("domain", "add", b.domain, "--cert", str(b.dir / "domain.crt"))
        for a, b in ((alice, bob), (bob, alice)):
            a.accord(
                "route", "add", "--to", b.domain, "--endpoint", f"https://127.0.0.1:{b.gateway_port}",
                "--wait", "30",
            )  # fmt: skip
        path_a, path_b, truth = make_tables()
        console.print(f"generated {ROWS:,} rows per party, {len(truth):,} shared ids (seed {SEED})")
        alice.accord("data", "add", "customers", "--path", str(path_a))
        bob.accord("data", "add", "transactions", "--path", str(path_b))
        job_file = DEMO / "psi-job.yaml"
        job_file.write_text(job_yaml())
        alice.accord("apply", "-f", str(job_file))
        client = alice.client
        deadline = time.monotonic() + 120
        job: dict[str, Any] = {}
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                job = client.get("Job", JOB)
                tasks = client.list("Task", selector=f"accord/job={JOB}")["items"]
                live.update(progress_table(job, tasks))
                if (job.get("status") or {}).get("phase") in FINAL:
                    break
                time.sleep(0.25)
        alice.accord("get", "job")
        phase = (job.get("status") or {}).get("phase")
        if phase != "Succeeded":
            console.print(f"[red]job {JOB} ended {phase}: {(job.get('status') or {}).get('message')}[/]")
            return 1
        ok = True
        for n in (alice, bob):
            output = n.client.get("DomainData", f"{JOB}-psi-output")
            location = n.dir / "data" / output["spec"]["relative_uri"]
            with location.open() as f:
                ids = {row["id"] for row in csv.DictReader(f)}
            match = ids == truth
            ok = ok and match
            console.print(
                f"{n.domain}: intersection {len(ids):,} rows, DomainData {JOB}-psi-output at {location} "
                f"-> {'matches' if match else 'DIFFERS FROM'} the plaintext intersection ({len(truth):,})"
            )
        alice.accord("data", "head", f"{JOB}-psi-output", "-n", "3")
        alice.accord("audit", "verify")
        console.print(f"demo finished in {time.monotonic() - t0:.1f} s")
        if not ok:
            console.print("[red]the PSI result differs from the plaintext intersection[/]")
            return 1
        console.print(f"[bold green]job {JOB} Succeeded: both parties hold the same {len(truth):,} rows[/]")
        return 0
    finally:
        for n in (bob, alice):
            n.stop()


if __name__ == "__main__":
    raise SystemExit(main())
