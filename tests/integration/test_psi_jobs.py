"""Two-party PSI as users run it: two real nodes, data registered through DataMesh, a job through the CLI.

Checks the built-in engine's results against a plain Python set intersection (duplicates, an empty
intersection, an empty input, multi-column keys), a missing key column (a clear error naming the party
and the column), and a party killed mid-PSI (the job fails naming the party, no partial output is
registered as a DomainData, and a rerun succeeds).
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accord.errors import NotFound
from tests.nodes import NodeProcess, connect, eventually

FAST = {"route_probe_seconds": 1.0}
FINAL = ("Succeeded", "Failed", "Cancelled", "ApprovalReject")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    base = tmp_path_factory.mktemp("psi")
    alice = NodeProcess(base / "alice", "alice", settings=FAST)
    bob = NodeProcess(base / "bob", "bob", settings=FAST)
    try:
        alice.start(wait=False)
        bob.start(wait=False)
        alice.wait_ready()
        bob.wait_ready()
        connect(alice, bob)
        yield alice, bob
    finally:
        bob.stop()
        alice.stop()


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _register(node: NodeProcess, name: str, path: Path) -> None:
    proc = node.cli("data", "add", name, "--path", str(path))
    assert proc.returncode == 0, proc.stderr


def _submit(alice: NodeProcess, job: str, config: dict[str, Any]) -> None:
    doc = f"""apiVersion: kuscia.secretflow/v1alpha1
kind: KusciaJob
metadata: {{name: {job}}}
spec:
  initiator: alice
  tasks:
  - alias: psi
    appImage: psi
    taskInputConfig: '{json.dumps(config)}'
    parties: [{{domainID: alice}}, {{domainID: bob}}]
"""
    proc = alice.cli("apply", "-f", "-", input=doc)
    assert proc.returncode == 0, proc.stderr


def _wait_final(node: NodeProcess, job: str, timeout: float = 120) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        doc = node.client.get("Job", job)
        return doc if doc["status"]["phase"] in FINAL else None

    return eventually(final, timeout=timeout, interval=0.3, what=f"job {job} to end")


def _output_ids(node: NodeProcess, name: str, key: str = "id") -> list[str]:
    data = node.client.get("DomainData", name)
    with (node.dir / "data" / data["spec"]["relative_uri"]).open() as f:
        return [row[key] for row in csv.DictReader(f)]


def _config(
    a: str, b: str, keys_a: list[str] | None = None, keys_b: list[str] | None = None, **extra: Any
) -> Any:
    return {
        "protocol": "ECDH",
        "inputs": {
            "alice": {"data": a, "keys": keys_a or ["id"]},
            "bob": {"data": b, "keys": keys_b or ["id"]},
        },
        **extra,
    }


def test_intersection_matches_plaintext_with_duplicates(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    alice, bob = pair
    ids_a = [f"k{i}" for i in range(0, 3000)] + ["k5", "k6"]  # duplicates at alice
    ids_b = [f"k{i}" for i in range(2000, 5000, 2)]
    _register(alice, "dup-a", _write(tmp_path / "a.csv", ["id", "x"], [[i, n] for n, i in enumerate(ids_a)]))
    _register(bob, "dup-b", _write(tmp_path / "b.csv", ["id", "y"], [[i, 1] for i in ids_b]))
    _submit(alice, "psi-dup", _config("dup-a", "dup-b", duplicates="keep-first"))
    job = _wait_final(alice, "psi-dup")
    assert job["status"]["phase"] == "Succeeded", job["status"]
    truth = set(ids_a) & set(ids_b)
    out_a = _output_ids(alice, "psi-dup-psi-output")
    out_b = _output_ids(bob, "psi-dup-psi-output")
    assert set(out_a) == truth and len(out_a) == len(truth)
    assert out_a == out_b  # aligned: same keys in the same order at both receivers


def test_duplicates_refused_by_default_naming_the_party(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    alice, bob = pair
    _register(alice, "dd-a", _write(tmp_path / "a.csv", ["id"], [["x"], ["x"], ["y"]]))
    _register(bob, "dd-b", _write(tmp_path / "b.csv", ["id"], [["x"]]))
    _submit(alice, "psi-dd", _config("dd-a", "dd-b"))
    job = _wait_final(alice, "psi-dd")
    assert job["status"]["phase"] == "Failed"
    assert "alice" in job["status"]["message"], job["status"]


def test_empty_intersection_and_empty_input(pair: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    alice, bob = pair
    _register(alice, "e-a", _write(tmp_path / "a.csv", ["id"], [[f"a{i}"] for i in range(100)]))
    _register(bob, "e-b", _write(tmp_path / "b.csv", ["id"], [[f"b{i}"] for i in range(100)]))
    _register(bob, "e-empty", _write(tmp_path / "empty.csv", ["id"], []))
    _submit(alice, "psi-none", _config("e-a", "e-b"))
    _submit(alice, "psi-empty", _config("e-a", "e-empty"))
    for job_name in ("psi-none", "psi-empty"):
        job = _wait_final(alice, job_name)
        assert job["status"]["phase"] == "Succeeded", job["status"]
        assert _output_ids(alice, f"{job_name}-psi-output") == []
        assert _output_ids(bob, f"{job_name}-psi-output") == []


def test_multi_column_keys(pair: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    alice, bob = pair
    rows_a = [[f"u{i % 50}", str(i % 7), i] for i in range(300)]
    rows_b = [[f"u{i % 50}", str(i % 5), i] for i in range(0, 300, 3)]
    _register(alice, "mk-a", _write(tmp_path / "a.csv", ["uid", "day", "v"], rows_a))
    _register(bob, "mk-b", _write(tmp_path / "b.csv", ["user", "d", "w"], rows_b))
    _submit(alice, "psi-mk", _config("mk-a", "mk-b", ["uid", "day"], ["user", "d"], duplicates="keep-first"))
    job = _wait_final(alice, "psi-mk")
    assert job["status"]["phase"] == "Succeeded", job["status"]
    truth = {(r[0], r[1]) for r in rows_a} & {(r[0], r[1]) for r in rows_b}
    data = alice.client.get("DomainData", "psi-mk-psi-output")
    with (alice.dir / "data" / data["spec"]["relative_uri"]).open() as f:
        got = {(row["uid"], row["day"]) for row in csv.DictReader(f)}
    assert got == truth


def test_missing_key_column_names_party_and_column(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    alice, bob = pair
    _register(alice, "mc-a", _write(tmp_path / "a.csv", ["id"], [["x"]]))
    _register(bob, "mc-b", _write(tmp_path / "b.csv", ["id"], [["x"]]))
    _submit(alice, "psi-mc", _config("mc-a", "mc-b", keys_b=["uid"]))
    job = _wait_final(alice, "psi-mc")
    assert job["status"]["phase"] == "Failed"
    message = job["status"]["message"]
    assert "party bob: key column 'uid' is not a column of DomainData 'mc-b'" in message, message
    # Refused at prepare: no party started an engine (all-or-nothing).
    assert not (alice.dir / "tasks" / "psi-mc-psi" / "engine.log").exists()
    with pytest.raises(NotFound):
        alice.client.get("DomainData", "psi-mc-psi-output")


def _engine_pid(node: NodeProcess, task: str) -> int:
    record = node.dir / "tasks" / task
    for candidate in record.rglob("process.json"):
        pid = json.loads(candidate.read_text()).get("pid")
        if pid:
            return int(pid)
    raise AssertionError(f"no engine record under {record}")


def test_party_killed_mid_psi_fails_naming_it_and_rerun_succeeds(
    pair: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    alice, bob = pair
    rows = 60_000
    _register(alice, "big-a", _write(tmp_path / "a.csv", ["id"], [[f"k{i}"] for i in range(rows)]))
    _register(bob, "big-b", _write(tmp_path / "b.csv", ["id"], [[f"k{i}"] for i in range(0, 2 * rows, 2)]))
    _submit(alice, "psi-kill", _config("big-a", "big-b", workers=1))

    def bob_running() -> bool:
        task = bob.client.get("Task", "psi-kill-psi")
        return task["status"]["phase"] == "Running" and float(task["status"].get("progress") or 0) > 0.05

    eventually(bob_running, timeout=90, interval=0.1, what="bob's engine to be mid-PSI")
    engine = _engine_pid(bob, "psi-kill-psi")
    bob.kill()  # the machine dies: node and engine
    os.killpg(os.getpgid(engine), signal.SIGKILL) if _alive(engine) else None
    job = _wait_final(alice, "psi-kill", timeout=150)
    assert job["status"]["phase"] == "Failed"
    assert "bob" in job["status"]["message"], job["status"]
    with pytest.raises(NotFound):
        alice.client.get("DomainData", "psi-kill-psi-output")
    bob.start()
    eventually(lambda: alice.client.get("DomainRoute", "alice-bob")["status"]["phase"] == "Ready", timeout=60)
    _submit(alice, "psi-rerun", _config("big-a", "big-b"))
    job = _wait_final(alice, "psi-rerun", timeout=180)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    assert len(_output_ids(alice, "psi-rerun-psi-output")) == rows // 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
