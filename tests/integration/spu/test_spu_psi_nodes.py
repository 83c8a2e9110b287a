"""An SPU PSI task as a real two-node job: `accord node start` processes alice and bob, data registered
in each node's DataMesh, the job submitted at alice, each party's engine started by its own node from
SPU's venv, and the link carried by the two gateways' PTP transport.

Checked: the job succeeds, each node registers `<task>-output` (a CSV DomainData with lineage) holding
its own rows of the intersection, aligned with the peer's and equal to a Python set intersection; an
AppImage whose engine environment is missing fails at prepare with the message the user acts on; a party
whose engine is killed mid-PSI fails the job naming it, nobody registers an output, and a rerun succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accord.client.data import add_data, head_data
from accord.client.jobs import submit_job
from accord.errors import NotFound
from accord.runtimes.engines import ENGINE_LABEL
from accord.runtimes.process import ProcessRuntime
from tests.integration.spu.pair import PARTIES, make_tables
from tests.nodes import NodeProcess, connect, eventually, one_task_job

FINAL = ("Succeeded", "Failed", "ApprovalReject", "Cancelled")
LIMIT = 120.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    base = tmp_path_factory.mktemp("spu-nodes")
    started = {p: NodeProcess(base / p, p, settings={"route_probe_seconds": 1.0}) for p in PARTIES}
    try:
        for node in started.values():
            node.start(wait=False)
        for node in started.values():
            node.wait_ready()
        connect(*started.values())
        yield started
    finally:
        for node in started.values():
            try:
                node.stop()
            except AssertionError:
                node.kill()
        for node in started.values():
            runtime = ProcessRuntime(node.settings)
            for task in _run(runtime.running_tasks()):
                _run(runtime.stop(task, grace=1.0))


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _use_spu(node: NodeProcess, python: Path) -> None:
    """The seeded spu-psi runs the default engines dir's venv; point it at the session's if different."""
    image = node.client.get("AppImage", "spu-psi")
    if image["spec"]["command"][0] != str(python):
        image["spec"]["command"][0] = str(python)
        node.client.replace(image)


def _wait_job(node: NodeProcess, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = node.client.get("Job", name)["status"]
        return status if status["phase"] in FINAL else None

    result: dict[str, Any] = eventually(done, timeout=LIMIT, what=f"job {name} to finish")
    return result


def psi_job(name: str, config: dict[str, Any], app: str = "spu-psi") -> dict[str, Any]:
    return one_task_job(name, PARTIES, config, app=app, alias="psi")


def test_spu_psi_job_across_two_nodes(
    nodes: dict[str, NodeProcess], spu_python: Path, tmp_path: Path
) -> None:
    paths, expected = make_tables(tmp_path / "data", rows=1500, special=False)
    for party, node in nodes.items():
        _use_spu(node, spu_python)
        add_data(node.client, f"{party}-table", paths[party], column_types={"id": "str"})
    config = {
        "engine": "spu",
        "protocol": "RR22",
        "inputs": {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES},
        "receivers": list(PARTIES),
    }
    submit_job(nodes["alice"].client, psi_job("spu1", config))
    status = _wait_job(nodes["alice"], "spu1")
    assert status["phase"] == "Succeeded", status
    columns = {}
    for party, node in nodes.items():
        data = node.client.get("DomainData", "spu1-psi-output")
        assert data["spec"]["lineage"]["inputs"] == [f"{party}-table"]
        assert data["spec"]["lineage"]["task"] == "spu1-psi"
        head = head_data(node.client, "spu1-psi-output", rows=1000)
        names = [c["name"] for c in head["columns"]]
        columns[party] = [row[names.index("id")] for row in head["rows"]]
    assert columns["alice"] == columns["bob"]
    assert set(columns["alice"]) == expected and len(expected) == 750


def test_missing_engine_environment_fails_at_prepare(nodes: dict[str, NodeProcess], tmp_path: Path) -> None:
    missing = tmp_path / "engines" / "spu-0.9.5" / "bin" / "python"
    for node in nodes.values():
        node.client.create(
            {
                "kind": "AppImage",
                "meta": {"name": "spu-psi-elsewhere", "labels": {ENGINE_LABEL: "spu"}},
                "spec": {"command": [str(missing), "-m", "accord.engines.spu_psi"]},
            }
        )
    config = {
        "engine": "spu",
        "inputs": {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES},
    }
    submit_job(nodes["alice"].client, psi_job("spu2", config, app="spu-psi-elsewhere"))
    status = _wait_job(nodes["alice"], "spu2")
    assert status["phase"] == "Failed"
    text = json.dumps(status)
    assert "engine spu not installed on " in text and ": run accord engine install spu" in text, text


def _engine_processes(work_dir: Path) -> list[int]:
    """Pids of the SPU engine (guard and party process) running in `work_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"accord.engines.spu_psi" in cmdline and Path(cwd) == work_dir:
            pids.append(int(entry.name))
    return pids


def test_a_party_killed_mid_psi_fails_the_job_naming_it_and_a_rerun_succeeds(
    nodes: dict[str, NodeProcess], spu_python: Path, tmp_path: Path
) -> None:
    paths, expected = make_tables(tmp_path / "data", rows=200_000, special=False)
    for party, node in nodes.items():
        _use_spu(node, spu_python)
        add_data(node.client, f"{party}-big", paths[party], column_types={"id": "str"})
    config = {
        "engine": "spu",
        "protocol": "ECDH",
        "inputs": {p: {"data": f"{p}-big", "keys": ["id"]} for p in PARTIES},
        "receivers": list(PARTIES),
    }
    submit_job(nodes["alice"].client, psi_job("spu3", config))
    bob_work = nodes["bob"].settings.tasks_dir / "spu3-psi"
    log = bob_work / "engine.log"
    eventually(
        lambda: log.exists() and "linked with alice" in log.read_text(errors="replace"),
        timeout=LIMIT,
        what="bob's engine to start the PSI",
    )
    pids = eventually(lambda: _engine_processes(bob_work), timeout=10, what="bob's engine processes")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    status = _wait_job(nodes["alice"], "spu3")
    assert status["phase"] == "Failed", status
    assert status["task_messages"]["psi"].startswith("party bob:"), status
    for node in nodes.values():
        with pytest.raises(NotFound):
            node.client.get("DomainData", "spu3-psi-output")

    submit_job(nodes["alice"].client, psi_job("spu4", config))
    status = _wait_job(nodes["alice"], "spu4")
    assert status["phase"] == "Succeeded", status
    for node in nodes.values():
        assert node.client.get("DomainData", "spu4-psi-output")["spec"]["lineage"]["task"] == "spu4-psi"
    assert len(expected) == 100_000
