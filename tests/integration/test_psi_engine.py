"""Two real `python -m accord.engines.psi` processes on loopback with the full engine contract.

Covers what in-process tests cannot: the entry point and its exit codes, worker processes, progress
reports to a node API, routing through an egress proxy by `Host` header, and a party killed mid-protocol
(the survivor fails naming the peer and leaves no output).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from accord.datamesh.wire import TaskGrant
from accord.engines.dataio import DataMeshClient
from accord.engines.psi.engine import run_task
from accord.engines.psi.errors import ConfigError, InputError
from accord.engines.sdk import ClusterDefine, ClusterParty, Port, Service, TaskContext
from accord.resources.data import DomainData
from tests.integration.datamesh_node import datamesh_node

PARTIES = ("alice", "bob")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tables(tmp_path: Path, rows: int, seed: int) -> tuple[dict[str, str], set[str]]:
    rng = random.Random(seed)
    universe = rng.sample(range(10 * rows), int(rows * 1.5))
    alice_ids = [f"u{i:08d}" for i in universe[:rows]]
    bob_ids = [f"u{i:08d}" for i in universe[rows // 2 : rows // 2 + rows]]
    rng.shuffle(bob_ids)
    paths = {}
    for party, ids, column in (("alice", alice_ids, "age"), ("bob", bob_ids, "score")):
        path = tmp_path / f"{party}.csv"
        with path.open("w", newline="") as fh:
            fh.write(f"id,{column}\n")
            fh.writelines(f"{i},{rng.randint(0, 99)}\n" for i in ids)
        paths[party] = str(path)
    return paths, set(alice_ids) & set(bob_ids)


class Recorder(ThreadingHTTPServer):
    """A stand-in for the node's local API: records progress reports."""

    daemon_threads = True

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, dict[str, Any]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.reports.append((self.path, self.headers.get("Token", ""), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)


class HostRoutingProxy(ThreadingHTTPServer):
    """A stand-in for the gateway's egress port: forwards by `Host` to a local engine port."""

    daemon_threads = True

    def __init__(self, routes: dict[str, int]) -> None:
        self.hosts: set[str] = set()
        self.refused: list[str] = []
        self.routes = routes
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                host = self.headers.get("Host", "")
                proxy.hosts.add(host)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                if host not in proxy.routes:  # as the gateway answers for a service not registered yet
                    proxy.refused.append(host)
                    self.send_response(404)
                    self.send_header("X-Accord-Error", "unknown-service")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = urllib.request.Request(
                    f"http://127.0.0.1:{proxy.routes[host]}{self.path}",
                    data=body if self.command == "POST" else None,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower().startswith("x-")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                except OSError:
                    status, payload = 502, b"upstream unavailable"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _forward
            do_POST = _forward

        super().__init__(("127.0.0.1", 0), Handler)


@contextlib.contextmanager
def serve(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    with serve(server):
        yield server


class Engines:
    """Starts the two engine processes (each in its own process group) and always cleans them up."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        config: dict[str, Any],
        *,
        endpoints: dict[str, str],
        ports: dict[str, int],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        cluster = {
            "parties": [
                {"name": p, "role": "", "services": [{"portName": "psi", "endpoints": [endpoints[p]]}]}
                for p in PARTIES
            ],
        }
        for index, party in enumerate(PARTIES):
            work = self.tmp_path / party
            work.mkdir(exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCORD_", "TASK_", "KUSCIA_"))}
            env.update(
                {
                    "TASK_ID": "job-1-psi",
                    "TASK_INPUT_CONFIG": json.dumps(config),
                    "TASK_CLUSTER_DEFINE": json.dumps(
                        {**cluster, "selfPartyIdx": index, "selfEndpointIdx": 0}
                    ),
                    "ALLOCATED_PORTS": json.dumps(
                        {
                            "ports": [
                                {"name": "psi", "port": ports[party], "scope": "Cluster", "protocol": "HTTP"}
                            ]
                        }
                    ),
                    "KUSCIA_DOMAIN_ID": party,
                    "ACCORD_WORK_DIR": str(work),
                    **(extra_env or {}),
                }
            )
            self.procs[party] = subprocess.Popen(
                [sys.executable, "-m", "accord.engines.psi"],
                cwd=work,
                env=env,
                stdout=(work / "stdout.log").open("wb"),
                stderr=(work / "stderr.log").open("wb"),
                start_new_session=True,
            )

    def wait(self, party: str, timeout: float = 120) -> int:
        return self.procs[party].wait(timeout=timeout)

    def log(self, party: str, stream: str = "stderr") -> str:
        return (self.tmp_path / party / f"{stream}.log").read_text()

    def kill(self, party: str) -> None:
        proc = self.procs[party]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    runner = Engines(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def psi_config(paths: dict[str, str], **options: Any) -> dict[str, Any]:
    return {
        "protocol": "ECDH",
        "engine": "builtin",
        "inputs": {
            "alice": {"path": paths["alice"], "keys": ["id"]},
            "bob": {"path": paths["bob"], "keys": ["id"]},
        },
        "receivers": ["alice", "bob"],
        "join": "inner",
        "peer_wait_s": 30,
        "peer_timeout_s": 5,
        **options,
    }


def read_ids(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return [row["id"] for row in csv.DictReader(fh)]


def test_two_engine_processes_compute_the_intersection(
    tmp_path: Path, engines: Engines, recorder: Recorder
) -> None:
    paths, expected = make_tables(tmp_path, rows=3000, seed=21)
    ports = {p: free_port() for p in PARTIES}
    config = psi_config(paths, workers=2)
    config["inputs"]["bob"]["output_path"] = "result/bob.csv"
    engines.start(
        config,
        endpoints={p: f"127.0.0.1:{ports[p]}" for p in PARTIES},
        ports=ports,
        extra_env={
            "ACCORD_NODE_API": f"http://127.0.0.1:{recorder.server_address[1]}",
            "ACCORD_TASK_TOKEN": "tok",
        },
    )
    for party in PARTIES:
        assert engines.wait(party) == 0, engines.log(party)
    alice_ids = read_ids(tmp_path / "alice" / "output.csv")
    assert set(alice_ids) == expected and len(alice_ids) == len(expected)
    assert read_ids(tmp_path / "bob" / "result" / "bob.csv") == alice_ids
    summary = json.loads((tmp_path / "alice" / "result.json").read_text())
    assert summary["intersection_keys"] == len(expected) and summary["workers"] == 2
    assert "rows in the intersection" in engines.log("alice", "stdout")
    assert recorder.reports, "no progress was reported"
    assert {path for path, _, _ in recorder.reports} == {"/v1/tasks/job-1-psi/report"}
    assert all(token == "tok" for _, token, _ in recorder.reports)
    assert recorder.reports[-1][2]["progress"] == 1.0


def test_engines_talk_through_an_egress_proxy_by_host_header(tmp_path: Path, engines: Engines) -> None:
    paths, expected = make_tables(tmp_path, rows=500, seed=4)
    ports = {p: free_port() for p in PARTIES}
    endpoints = {p: f"job-1-psi-psi.{p}.svc" for p in PARTIES}
    proxy = HostRoutingProxy({endpoints["bob"]: ports["bob"]})  # alice's service is not registered yet
    with serve(proxy):
        engines.start(
            psi_config(paths, workers=1),
            endpoints=endpoints,
            ports=ports,
            extra_env={"ACCORD_EGRESS": f"http://127.0.0.1:{proxy.server_address[1]}"},
        )
        deadline = time.monotonic() + 30
        while endpoints["alice"] not in proxy.refused:  # bob was told "unknown-service" and retries
            assert time.monotonic() < deadline and engines.procs["bob"].poll() is None, engines.log("bob")
            time.sleep(0.02)
        proxy.routes[endpoints["alice"]] = ports["alice"]
        for party in PARTIES:
            assert engines.wait(party) == 0, engines.log(party)
    assert proxy.hosts == set(endpoints.values())
    assert set(read_ids(tmp_path / "alice" / "output.csv")) == expected


def test_bad_config_exits_2_with_one_line_naming_the_field(tmp_path: Path, engines: Engines) -> None:
    paths, _ = make_tables(tmp_path, rows=10, seed=1)
    ports = {p: free_port() for p in PARTIES}
    engines.start(
        psi_config(paths, receivers=["carol"]),
        endpoints={p: f"127.0.0.1:{ports[p]}" for p in PARTIES},
        ports=ports,
    )
    for party in PARTIES:
        assert engines.wait(party, timeout=30) == 2
        assert engines.log(party).strip().splitlines() == [
            "psi: invalid config: receivers: 'carol' is not a party of this task"
        ]


def start_and_wait_for_handshake(engines: Engines, paths: dict[str, str], **options: Any) -> None:
    ports = {p: free_port() for p in PARTIES}
    engines.start(
        psi_config(paths, **options), endpoints={p: f"127.0.0.1:{ports[p]}" for p in PARTIES}, ports=ports
    )
    deadline = time.monotonic() + 60
    while "handshake with alice done" not in engines.log("bob", "stdout"):
        assert time.monotonic() < deadline, engines.log("bob", "stdout") + engines.log("bob")
        assert engines.procs["bob"].poll() is None, engines.log("bob")
        time.sleep(0.05)


def test_a_party_killed_mid_protocol_fails_the_other_naming_it(tmp_path: Path, engines: Engines) -> None:
    paths, expected = make_tables(tmp_path, rows=20000, seed=8)
    start_and_wait_for_handshake(engines, paths, workers=1, peer_timeout_s=3)
    engines.kill("bob")  # SIGKILL to the whole process group: no goodbye
    assert engines.wait("alice", timeout=60) == 4
    reason = engines.log("alice").strip().splitlines()
    assert len(reason) == 1
    assert reason[0].startswith("psi: peer error: peer bob stopped responding during round ")
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == ["stderr.log", "stdout.log"]

    # a rerun in the same work dirs succeeds
    start_and_wait_for_handshake(engines, paths, workers=1)
    for party in PARTIES:
        assert engines.wait(party) == 0, engines.log(party)
    assert set(read_ids(tmp_path / "alice" / "output.csv")) == expected


def test_a_cancelled_party_tells_the_other(tmp_path: Path, engines: Engines) -> None:
    paths, _ = make_tables(tmp_path, rows=20000, seed=9)
    start_and_wait_for_handshake(engines, paths, workers=1)
    engines.procs["bob"].send_signal(signal.SIGTERM)  # what the runtime does to cancel a task
    assert engines.wait("bob", timeout=60) == 143
    assert engines.log("bob").strip().splitlines() == ["psi: terminated: stopped by signal SIGTERM"]
    assert engines.wait("alice", timeout=60) == 4
    assert engines.log("alice").strip().splitlines() == [
        "psi: peer error: peer bob aborted the task: bob failed (terminated)"
    ]
    for party in PARTIES:
        assert sorted(p.name for p in (tmp_path / party).iterdir()) == ["stderr.log", "stdout.log"]


# -- under a node: inputs and outputs through DataMesh -------------------------------------------------


def contract(
    party: str, ports: dict[str, int], config: dict[str, Any], work: Path, token: str
) -> TaskContext:
    cluster = ClusterDefine(
        parties=[
            ClusterParty(
                name=p, role="", services=[Service(port_name="psi", endpoints=[f"127.0.0.1:{ports[p]}"])]
            )
            for p in PARTIES
        ],
        self_party_idx=PARTIES.index(party),
    )
    work.mkdir(parents=True, exist_ok=True)
    return TaskContext(
        task_id="job-1-psi",
        domain_id=party,
        input_config=json.dumps(config),
        cluster=cluster,
        ports={"psi": Port(name="psi", port=ports[party])},
        work_dir=work,
        token=token,
    )


async def test_under_a_node_data_comes_from_and_goes_to_datamesh(tmp_path: Path) -> None:
    paths, expected = make_tables(tmp_path, rows=400, seed=12)
    async with (
        datamesh_node(tmp_path, "alice", {"alice-table": paths["alice"]}) as alice,
        datamesh_node(tmp_path, "bob", {"bob-table": paths["bob"]}) as bob,
    ):
        nodes = {"alice": alice, "bob": bob}
        for party, node in nodes.items():
            node.tokens[f"tok-{party}"] = TaskGrant(
                task="job-1-psi", job="job-1", domain=party, inputs={f"{party}-table"}, outputs_allowed=True
            )
        ports = {p: free_port() for p in PARTIES}
        config = psi_config(paths, workers=0)
        config["inputs"] = {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES}

        def run(party: str) -> dict[str, Any]:
            ctx = contract(party, ports, config, tmp_path / party, f"tok-{party}")
            return run_task(ctx, {"ACCORD_DATAMESH": nodes[party].service.location})

        results = await asyncio.gather(*(asyncio.to_thread(run, p) for p in PARTIES))
        assert [r["output"] for r in results] == ["job-1-psi-output", "job-1-psi-output"]
        ids = {}
        for party, node in nodes.items():
            data = await node.store.get("DomainData", "job-1-psi-output")
            assert isinstance(data, DomainData)
            assert data.spec.lineage.model_dump() == {
                "inputs": [f"{party}-table"],
                "task": "job-1-psi",
                "job": "job-1",
            }
            node.tokens["reader"] = TaskGrant(task="next", domain=party, inputs={"job-1-psi-output"})
            client = DataMeshClient(node.service.location, "reader")
            table = await asyncio.to_thread(client.read_all, "job-1-psi-output")
            client.close()
            ids[party] = table.column("id").to_pylist()
        assert ids["alice"] == ids["bob"] and set(ids["alice"]) == expected and len(expected) == 200
        assert not (tmp_path / "alice" / "output.csv").exists()


async def test_under_a_node_local_paths_and_foreign_data_are_refused(tmp_path: Path) -> None:
    paths, _ = make_tables(tmp_path, rows=10, seed=13)
    async with datamesh_node(tmp_path, "alice", {"alice-table": paths["alice"]}) as alice:
        alice.tokens["tok"] = TaskGrant(task="job-1-psi", domain="alice", inputs={"alice-table"})
        ports = {p: free_port() for p in PARTIES}
        env = {"ACCORD_DATAMESH": alice.service.location}
        config = psi_config(paths, peer_wait_s=1)
        ctx = contract("alice", ports, config, tmp_path / "alice", "tok")
        with pytest.raises(ConfigError, match=r"^inputs\.alice\.path: under a node .* give 'data'"):
            await asyncio.to_thread(run_task, ctx, env)
        config["inputs"]["alice"] = {"data": "someone-elses-table", "keys": ["id"]}
        ctx = contract("alice", ports, config, tmp_path / "alice", "tok")
        with pytest.raises(InputError, match=r"^inputs\.alice\.data: .*someone-elses-table"):
            await asyncio.to_thread(run_task, ctx, env)
        config["inputs"]["alice"] = {"data": "alice-table", "keys": ["user_id"]}
        ctx = contract("alice", ports, config, tmp_path / "alice", "tok")
        with pytest.raises(
            InputError, match=r"^inputs\.alice\.keys: column 'user_id' not found in DomainData"
        ):
            await asyncio.to_thread(run_task, ctx, env)
