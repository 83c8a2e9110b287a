"""The node as a user meets it: `accord node init/start`, `accord apply/get`, bad input, clean stop."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "alice", "alice")
    n.start()
    yield n
    n.stop()


def _phase(node: NodeProcess, name: str) -> str:
    return str(node.client.get("Job", name)["status"]["phase"])


def test_demo_job_runs_to_succeeded(node: NodeProcess) -> None:
    applied = node.cli("apply", "-f", str(ROOT / "examples" / "hello-job.yaml"))
    assert applied.returncode == 0, applied.stderr
    eventually(lambda: _phase(node, "hello-demo") == "Succeeded", timeout=60, what="job Succeeded")
    got = node.cli("get", "job")
    assert got.returncode == 0, got.stderr
    assert "hello-demo" in got.stdout and "Succeeded" in got.stdout
    result = json.loads((node.dir / "tasks" / "hello-demo-summary" / "result.json").read_text())
    assert result["sum"] == 67
    verify = node.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert node.stop() == 0


BAD_INPUTS = {
    "malformed-yaml": ("kind: Job\nmeta: {name: x\n", 11110, "malformed YAML at line"),
    "unknown-kind": ("kind: Gizmo\nmeta: {name: x}\nspec: {}\n", 11111, "unknown kind 'Gizmo'"),
    "invalid-name": (
        "kind: Job\nmeta: {name: Bad_Name}\nspec: {initiator: alice, tasks: "
        "[{alias: a, app_image: hello, parties: [{domain: alice}]}]}\n",
        11200,
        "meta.name: name 'Bad_Name' is not a DNS label",
    ),
    "cycle": (
        "kind: Job\nmeta: {name: cyc}\nspec:\n  initiator: alice\n  tasks:\n"
        "  - {alias: a, app_image: hello, dependencies: [b], parties: [{domain: alice}]}\n"
        "  - {alias: b, app_image: hello, dependencies: [a], parties: [{domain: alice}]}\n",
        11204,
        "cycle: a -> b -> a",
    ),
    "missing-dependency": (
        "kind: Job\nmeta: {name: dep}\nspec:\n  initiator: alice\n  tasks:\n"
        "  - {alias: a, app_image: hello, dependencies: [nope], parties: [{domain: alice}]}\n",
        11205,
        "depends on 'nope', which is not a task of this job",
    ),
    "unknown-party": (
        "kind: Job\nmeta: {name: party}\nspec:\n  initiator: alice\n  tasks:\n"
        "  - {alias: a, app_image: hello, parties: [{domain: alice}, {domain: mallory}]}\n",
        11206,
        "party 'mallory' is not a known domain",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_precise_error_and_writes_nothing(node: NodeProcess, case: str) -> None:
    text, code, message = BAD_INPUTS[case]
    # A good document first: the bad one after it must stop the whole file (nothing half-applied).
    good = "kind: AppImage\nmeta: {name: first-doc}\nspec: {command: [/bin/true]}\n---\n"
    before = node.client.node_info()["revision"]
    proc = node.cli("apply", "-f", "-", input=good + text)
    assert proc.returncode == 1
    assert f"[{code}]" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert node.client.node_info()["revision"] == before
    assert all(i["meta"]["name"] != "first-doc" for i in node.client.list("AppImage")["items"])


def test_stale_resource_version_is_refused(node: NodeProcess) -> None:
    client = node.client
    created = client.create({"kind": "AppImage", "meta": {"name": "img"}, "spec": {"command": ["/bin/true"]}})
    first = dict(created)
    first["spec"] = {**created["spec"], "command": ["/bin/echo", "one"]}
    client.replace(first)
    stale = dict(created)
    stale["spec"] = {**created["spec"], "command": ["/bin/echo", "two"]}
    with pytest.raises(Exception) as info:
        client.replace(stale)
    assert getattr(info.value, "code", None) == 11109
    assert "stale" in str(info.value)
    assert client.get("AppImage", "img")["spec"]["command"] == ["/bin/echo", "one"]


@pytest.mark.parametrize("port", ["api_port", "gateway_port", "egress_port"])
def test_start_reports_port_in_use(tmp_path: Path, port: str) -> None:
    n = NodeProcess(tmp_path / "bob", "bob")
    taken = getattr(n.settings, port)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen(1)
        n.start(wait=False)
        assert n.proc is not None
        assert n.proc.wait(timeout=30) == 5
    assert str(taken) in n.log_tail()
    assert "in use" in n.log_tail()


def test_commands_without_a_node_dir_say_how_to_fix(tmp_path: Path) -> None:
    n = NodeProcess.__new__(NodeProcess)
    n.dir = tmp_path / "nothing"
    proc = n.cli("get", "jobs")
    assert proc.returncode == 1
    assert "accord node init" in proc.stderr
