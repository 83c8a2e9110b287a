"""A real node with every port configured as 0: found by the CLI and the SDK through the
`run/endpoints.json` it publishes; and the sweep that removes finished tasks' work dirs, in a real node.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from accord.node import endpoints
from accord.node.exit_codes import ExitCode
from tests.nodes import ACCORD, NodeProcess, eventually

ROOT = Path(__file__).resolve().parents[2]
HELLO_JOB = str(ROOT / "examples" / "hello-job.yaml")


def _fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def _job_phase(node: NodeProcess, name: str) -> Any:
    return node.client.get("Job", name)["status"]["phase"]


def test_a_node_with_every_port_zero_is_found_and_reports_its_ports(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "alice", "alice", zero_ports=True)
    assert (node.settings.api_port, node.settings.gateway_port, node.settings.egress_port) == (0, 0, 0)
    node.start()
    try:
        assert node.proc is not None
        rec = endpoints.read_live(node.settings)
        assert rec is not None and rec.pid == node.proc.pid
        ports = (rec.api_port, rec.gateway_port, rec.egress_port, rec.datamesh_port)
        assert all(ports) and len(set(ports)) == 4

        status = node.cli("node", "status")
        assert status.returncode == 0, status.stderr
        fields = _fields(status.stdout)
        assert fields["api"] == f"http://127.0.0.1:{rec.api_port}" == rec.api_url
        assert fields["gateway"] == f"127.0.0.1:{rec.gateway_port}"
        assert fields["egress"] == f"127.0.0.1:{rec.egress_port}"
        assert fields["datamesh"] == f"127.0.0.1:{rec.datamesh_port}"
        assert fields["pid"] == str(node.proc.pid)

        # Engines are told the API port actually bound (not 0), so their progress reports arrive.
        applied = node.cli("apply", "-f", HELLO_JOB)
        assert applied.returncode == 0, applied.stderr
        eventually(lambda: _job_phase(node, "hello-demo") == "Succeeded", timeout=60, what="job Succeeded")
        engine_log = (node.dir / "tasks" / "hello-demo-stats-a" / "engine.log").read_text()
        assert "progress report" not in engine_log, engine_log

        # A second node on the same directory is refused while this one runs.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        second = subprocess.run(
            [ACCORD, "node", "start", "--dir", str(node.dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
        assert f"already runs from {node.dir.resolve()} (pid {node.proc.pid}" in second.stderr
        assert endpoints.read_live(node.settings) == rec

        assert node.stop() == 0
        assert not node.settings.endpoints_path.exists()  # withdrawn on a clean stop

        node.start()
        node.kill()  # no clean stop: the record stays, but names a dead process
        assert endpoints.read(node.settings) is not None and endpoints.read_live(node.settings) is None
        down = node.cli("node", "status")
        assert down.returncode == 1 and "http://127.0.0.1:0 is not running" in down.stderr
    finally:
        node.kill()


def test_finished_task_dirs_are_swept_after_the_retention(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "alice",
        "alice",
        zero_ports=True,
        settings={"task_retention_hours": 1 / 3600, "task_sweep_seconds": 0.5},
    )
    node.start()
    try:
        applied = node.cli("apply", "-f", HELLO_JOB)
        assert applied.returncode == 0, applied.stderr
        eventually(lambda: _job_phase(node, "hello-demo") == "Succeeded", timeout=60, what="job Succeeded")
        tasks = node.dir / "tasks"
        eventually(lambda: not any(tasks.iterdir()), timeout=30, what="every task dir removed")
        records = node.client.list("AuditRecord")["items"]
        removed = sorted(
            r["spec"]["target_name"] for r in records if r["spec"]["action"] == "task_dir.remove"
        )
        assert removed == ["hello-demo-stats-a", "hello-demo-stats-b", "hello-demo-summary"]
        assert "removed its work dir" in (node.dir / "logs" / "node.log").read_text()
        assert node.stop() == 0
    finally:
        node.kill()
