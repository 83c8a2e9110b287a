"""The engine SDK (contract parsing, progress reports, result files) and the built-in hello engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from accord.engines import hello
from accord.engines.sdk import EngineContractError, TaskContext, report_progress, write_result
from accord.resources.appimage import AppImage, AppImageSpec, AppPort
from accord.resources.job import AllocatedPort, Party
from accord.resources.meta import ObjectMeta
from accord.runtimes.contract import contract_variables

LIMIT = 30.0


class Recorder:
    """A real HTTP server on a free loopback port that records what engines POST to it."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorder.requests.append(
                    {"path": self.path, "token": self.headers.get("Token"), "body": json.loads(body)}
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def contract_env(work_dir: Path, *, node_api: str = "", input_config: str = "{}") -> dict[str, str]:
    image = AppImage(meta=ObjectMeta(name="x"), spec=AppImageSpec(ports=[AppPort(name="spu")]))
    return contract_variables(
        task="job-a",
        domain="alice",
        input_config=input_config,
        parties=[Party(domain="alice", role="host"), Party(domain="bob")],
        self_party_index=0,
        app_image=image,
        ports=[AllocatedPort(name="spu", port=23456, protocol="GRPC")],
        node_api=node_api,
        token="tok-123",
        work_dir=work_dir,
    )


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as rec:
        yield rec


# -- TaskContext -------------------------------------------------------------------------------------


def test_from_env_parses_the_whole_contract(tmp_path: Path) -> None:
    ctx = TaskContext.from_env(contract_env(tmp_path, input_config='{"numbers":[1]}'))
    assert ctx.task_id == "job-a" and ctx.domain_id == "alice"
    assert ctx.input_json() == {"numbers": [1]}
    assert ctx.port("spu") == 23456 and ctx.ports["spu"].protocol == "GRPC"
    assert ctx.cluster.self_party.name == "alice" and ctx.cluster.self_party.role == "host"
    assert ctx.cluster.parties[1].endpoint("spu") == "job-a-0-spu.bob.svc"
    assert ctx.work_dir == tmp_path
    assert ctx.token == "tok-123" and "tok-123" not in repr(ctx)


def test_missing_variables_are_named(tmp_path: Path) -> None:
    env = contract_env(tmp_path)
    del env["TASK_ID"], env["ALLOCATED_PORTS"]
    with pytest.raises(EngineContractError) as err:
        TaskContext.from_env(env)
    assert "TASK_ID" in str(err.value) and "ALLOCATED_PORTS" in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TASK_CLUSTER_DEFINE", "not json", "TASK_CLUSTER_DEFINE is not valid JSON"),
        ("TASK_CLUSTER_DEFINE", '{"parties": []}', "TASK_CLUSTER_DEFINE is malformed"),
        ("TASK_CLUSTER_DEFINE", '{"parties": [], "selfPartyIdx": 0}', "out of range"),
        ("ALLOCATED_PORTS", '{"ports": [{"name": "x"}]}', "ALLOCATED_PORTS is malformed"),
    ],
)
def test_malformed_variables_are_explained(tmp_path: Path, name: str, value: str, expected: str) -> None:
    env = contract_env(tmp_path)
    env[name] = value
    with pytest.raises(EngineContractError, match=expected):
        TaskContext.from_env(env)


def test_input_and_port_errors(tmp_path: Path) -> None:
    ctx = TaskContext.from_env(contract_env(tmp_path, input_config=""))
    assert ctx.input_json() == {}
    bad = TaskContext.from_env(contract_env(tmp_path, input_config="{oops"))
    with pytest.raises(EngineContractError, match="TASK_INPUT_CONFIG is not valid JSON"):
        bad.input_json()
    with pytest.raises(EngineContractError, match=r"no port named 'psi' was allocated \(allocated: spu\)"):
        ctx.port("psi")
    with pytest.raises(EngineContractError, match="no endpoint for port 'psi'"):
        ctx.cluster.self_party.endpoint("psi")


def test_write_result_writes_bytes_text_and_json_atomically(tmp_path: Path) -> None:
    ctx = TaskContext.from_env(contract_env(tmp_path))
    assert ctx.write_result("raw.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert ctx.write_result("out/report.txt", "hello").read_text() == "hello"
    path = ctx.write_result("result.json", {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw.bin", "result.json"]
    for bad in ("../escape.json", "/tmp/abs.json", ""):
        with pytest.raises(EngineContractError, match="relative path"):
            ctx.write_result(bad, {})
    assert write_result("via-module.txt", "x", ctx) == tmp_path / "via-module.txt"


# -- progress reports --------------------------------------------------------------------------------


def test_report_progress_posts_json_with_the_token(tmp_path: Path, recorder: Recorder) -> None:
    ctx = TaskContext.from_env(contract_env(tmp_path, node_api=recorder.url + "/"))
    assert ctx.report_progress(0.5, "half way") is True
    assert ctx.report_progress(7, "clamped") is True
    assert recorder.requests == [
        {
            "path": "/v1/tasks/job-a/report",
            "token": "tok-123",
            "body": {"progress": 0.5, "message": "half way"},
        },
        {
            "path": "/v1/tasks/job-a/report",
            "token": "tok-123",
            "body": {"progress": 1.0, "message": "clamped"},
        },
    ]


def test_report_failures_are_logged_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Recorder(status=401) as refusing:
        ctx = TaskContext.from_env(contract_env(tmp_path, node_api=refusing.url))
        assert ctx.report_progress(0.2) is False
    assert "refused by the node: HTTP 401" in caplog.text
    # The server is gone now: connection refused.
    assert ctx.report_progress(0.3) is False
    assert "progress report to" in caplog.text
    no_api = TaskContext.from_env(contract_env(tmp_path, node_api=""))
    assert no_api.report_progress(0.4) is False
    assert report_progress(0.5, "outside an engine", None) is False  # not started as an engine


# -- the hello engine -----------------------------------------------------------------------------------


def test_hello_input_rules() -> None:
    assert hello.parse_input({"numbers": [1, 2.5]})["numbers"] == [1, 2.5]
    for bad, field in [
        ([1], "JSON object"),
        ({"numbers": "1,2"}, '"numbers"'),
        ({"numbers": [True]}, '"numbers"'),
        ({"sleep": -1}, '"sleep"'),
        ({"exit_code": 256}, '"exit_code"'),
    ]:
        with pytest.raises(hello.InputError, match=field):
            hello.parse_input(bad)
    assert hello.summarise([]) == {"count": 0, "sum": 0, "mean": None, "min": None, "max": None}
    assert hello.summarise([3, 1, 4, 1, 5]) == {"count": 5, "sum": 14, "mean": 2.8, "min": 1, "max": 5}


def run_hello(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", ""), "HOME": str(work), **env}
    return subprocess.run(
        [sys.executable, "-m", "accord.engines.hello"],
        cwd=work,
        env=full,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )


def test_hello_computes_reports_and_writes_its_result(tmp_path: Path, recorder: Recorder) -> None:
    env = contract_env(tmp_path, node_api=recorder.url, input_config='{"numbers": [3, 1, 4, 1, 5]}')
    done = run_hello(tmp_path, env)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {
        "count": 5,
        "sum": 14,
        "mean": 2.8,
        "min": 1,
        "max": 5,
        "task_id": "job-a",
        "domain": "alice",
    }
    progress = [r["body"]["progress"] for r in recorder.requests]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
    assert {r["token"] for r in recorder.requests} == {"tok-123"}


def test_hello_knobs_and_bad_input(tmp_path: Path) -> None:
    failing = run_hello(tmp_path, contract_env(tmp_path, input_config='{"numbers": [1], "exit_code": 3}'))
    assert failing.returncode == 3 and (tmp_path / "result.json").exists()
    crashing = run_hello(tmp_path, contract_env(tmp_path, input_config='{"crash": true}'))
    assert crashing.returncode == -signal.SIGKILL
    bad = run_hello(tmp_path, contract_env(tmp_path, input_config='{"numbers": "x"}'))
    assert bad.returncode == hello.USAGE_ERROR and '"numbers" must be a list' in bad.stderr
    outside = run_hello(tmp_path, {})
    assert outside.returncode == hello.USAGE_ERROR and "missing environment variable" in outside.stderr
