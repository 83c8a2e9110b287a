"""`make demo`: start a node on this machine and run a real job end to end through the CLI.

What it does, as a person would: `accord node init`, `accord node start` (a separate process),
`accord apply -f examples/hello-job.yaml` (a KusciaJob), a live view of the job's tasks until the job
ends, `accord get job`, the engines' results, `accord audit verify`, then a clean stop (SIGTERM).
Everything lives under `.demo/` in the repository (removed at the next run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from accord.client import AccordClient

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
ACCORD = str(Path(sys.executable).with_name("accord"))
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accord(*args: str, node_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    console.print(f"[bold cyan]$ accord {' '.join(args)}[/]")
    env = {**os.environ, "ACCORD_DIR": str(node_dir)}
    proc = subprocess.run([ACCORD, *args], env=env, text=True, capture_output=True, timeout=120)
    if proc.stdout.strip():
        console.print(proc.stdout.rstrip())
    if proc.returncode != 0:
        console.print(f"[red]{proc.stderr.rstrip()}[/]")
        if check:
            raise SystemExit(f"demo failed: accord {' '.join(args)} exited {proc.returncode}")
    return proc


def wait_ready(client: AccordClient, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"demo failed: the node exited with code {proc.returncode}")
        try:
            client.health()
            return time.monotonic() - start
        except Exception:
            time.sleep(0.05)
    raise SystemExit("demo failed: the node did not become ready in time")


def job_table(job: dict[str, object]) -> Table:
    status = job.get("status") or {}
    assert isinstance(status, dict)
    table = Table(title=f"job hello-demo: {status.get('phase')}")
    table.add_column("task")
    table.add_column("phase")
    tasks = status.get("task_status") or {}
    assert isinstance(tasks, dict)
    for alias in ("stats-a", "stats-b", "summary"):
        table.add_row(alias, str(tasks.get(alias, "-")))
    return table


def main() -> int:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    node_dir = DEMO_DIR / "alice"
    accord(
        "node",
        "init",
        "--domain",
        "alice",
        "--dir",
        str(node_dir),
        "--api-port",
        str(free_port()),
        "--gateway-port",
        str(free_port()),
        "--egress-port",
        str(free_port()),
        node_dir=node_dir,
    )
    log_file = (DEMO_DIR / "alice-node.log").open("wb")
    console.print("[bold cyan]$ accord node start[/] (in the background; log in .demo/alice-node.log)")
    node = subprocess.Popen(
        [ACCORD, "node", "start", "--dir", str(node_dir)], stdout=log_file, stderr=subprocess.STDOUT
    )
    try:
        client = AccordClient.from_node_dir(node_dir)
        ready_s = wait_ready(client, node)
        console.print(f"node alice ready in {ready_s:.2f} s")
        accord("apply", "-f", str(ROOT / "examples" / "hello-job.yaml"), node_dir=node_dir)
        deadline = time.monotonic() + 60
        job: dict[str, object] = {}
        with Live(console=console, refresh_per_second=8) as live:
            while time.monotonic() < deadline:
                job = client.get("Job", "hello-demo")
                live.update(job_table(job))
                phase = (job.get("status") or {}).get("phase")  # type: ignore[union-attr]
                if phase in ("Succeeded", "Failed", "Cancelled", "ApprovalReject"):
                    break
                time.sleep(0.2)
        accord("get", "job", node_dir=node_dir)
        phase = (job.get("status") or {}).get("phase")  # type: ignore[union-attr]
        for alias in ("stats-a", "stats-b", "summary"):
            result = node_dir / "tasks" / f"hello-demo-{alias}" / "result.json"
            if result.exists():
                console.print(f"{alias}: {json.dumps(json.loads(result.read_text()))}")
        accord("audit", "verify", node_dir=node_dir)
        if phase != "Succeeded":
            console.print(f"[red]job ended {phase}[/]")
            return 1
        console.print("[bold green]job hello-demo Succeeded[/]")
        return 0
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            code = node.wait(timeout=30)
            console.print(f"node alice stopped (exit code {code})")
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
            console.print("[red]node alice did not stop in 30 s: killed[/]")
        log_file.close()


if __name__ == "__main__":
    raise SystemExit(main())
