"""The `accord` CLI through typer's CliRunner against a real API server in a thread."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from accord.api.testing import RunningNode, serve_node_dir
from accord.cli.app import app
from accord.resources import AuditRecord, ObjectMeta, Party, Task, TaskPhase
from accord.resources.job import TaskSpec

TOKEN = "cli-test-token"
JOB = """
kind: Job
meta: {name: %s, labels: {team: %s}}
spec:
  initiator: alice
  tasks:
    - {alias: a, app_image: hello, parties: [{domain: alice}]}
    - {alias: b, app_image: hello, parties: [{domain: alice}], dependencies: [a]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    with serve_node_dir(tmp_path / "alice", token=TOKEN) as running:
        yield running


def accord(*args: str, node_dir: Path | None = None, stdin: str | None = None) -> Result:
    env = {"ACCORD_DIR": str(node_dir)} if node_dir is not None else {"ACCORD_DIR": ""}
    return CliRunner().invoke(app, list(args), input=stdin, env=env)


def applied(node: RunningNode, *jobs: tuple[str, str]) -> None:
    text = "---\n".join(JOB % job for job in jobs)
    result = accord("apply", "-f", "-", node_dir=node.dir, stdin=text)
    assert result.exit_code == 0, result.stderr


# -- basics ----------------------------------------------------------------------------------------------


def test_version_and_help() -> None:
    result = accord("--version")
    assert result.exit_code == 0 and result.stdout.startswith("accord 0.")
    assert accord("--help").exit_code == 0


def test_no_node_dir_is_a_usage_error() -> None:
    result = accord("get", "jobs")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error [11100]: no node directory: pass --dir DIR or set ACCORD_DIR"


def test_bad_option_value_is_a_usage_error(node: RunningNode) -> None:
    result = accord("get", "jobs", "-o", "xml", node_dir=node.dir)
    assert result.exit_code == 2


# -- apply / get / describe / delete ---------------------------------------------------------------------


def test_apply_file_and_stdin(node: RunningNode, tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(JOB % ("j1", "risk"))
    result = accord("apply", "-f", str(file), "--dir", str(node.dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "job/j1 created"
    again = accord("apply", "-f", "-", node_dir=node.dir, stdin=JOB % ("j1", "risk"))
    assert again.stdout.strip() == "job/j1 unchanged"


def test_apply_errors(node: RunningNode, tmp_path: Path) -> None:
    cycle = (JOB % ("j1", "x")).replace("dependencies: [a]", "dependencies: [b]")
    result = accord("apply", "-f", "-", node_dir=node.dir, stdin=cycle)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error [11204]: task 'b' depends on itself"
    missing = accord("apply", "-f", str(tmp_path / "nope.yaml"), node_dir=node.dir)
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"error [11100]: cannot read {tmp_path / 'nope.yaml'}")


def test_get_table_yaml_json_and_selector(node: RunningNode) -> None:
    applied(node, ("j1", "risk"), ("j2", "ops"))
    table = accord("get", "jobs", node_dir=node.dir)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "TASKS", "INITIATOR", "AGE"]
    assert lines[1].split()[:4] == ["j1", "Initialized", "0/2", "alice"]
    assert lines[2].split()[0] == "j2"
    selected = accord("get", "job", "-l", "team=ops", node_dir=node.dir)
    assert [line.split()[0] for line in selected.stdout.splitlines()[1:]] == ["j2"]
    one = yaml.safe_load(accord("get", "Job", "j1", "-o", "yaml", node_dir=node.dir).stdout)
    assert one["kind"] == "Job" and one["meta"]["labels"] == {"team": "risk"}
    many = json.loads(accord("get", "jobs", "-o", "json", node_dir=node.dir).stdout)
    assert [i["meta"]["name"] for i in many["items"]] == ["j1", "j2"]
    stream = list(yaml.safe_load_all(accord("get", "jobs", "-o", "yaml", node_dir=node.dir).stdout))
    assert [d["meta"]["name"] for d in stream] == ["j1", "j2"]
    empty = accord("get", "routes", node_dir=node.dir)
    assert empty.stdout.strip() == "no DomainRoute objects found"


def test_get_errors(node: RunningNode) -> None:
    missing = accord("get", "job", "nope", node_dir=node.dir)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error [11202]: Job 'nope' not found"
    unknown = accord("get", "gizmos", node_dir=node.dir)
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error [11111]: unknown kind 'gizmos'")


def test_describe_shows_the_object_and_its_audit_records(node: RunningNode) -> None:
    applied(node, ("j1", "risk"))
    result = accord("describe", "job", "j1", node_dir=node.dir)
    assert result.exit_code == 0, result.stderr
    document, audit = result.stdout.split("\n\n", 1)
    assert yaml.safe_load(document)["meta"]["name"] == "j1"
    assert audit.startswith("audit (last 1 of 1):")
    assert audit.splitlines()[1].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "VERSION"]
    assert audit.splitlines()[2].split()[2:] == ["user", "create", "1"]


def test_delete(node: RunningNode) -> None:
    applied(node, ("j1", "risk"))
    result = accord("delete", "jobs", "j1", node_dir=node.dir)
    assert result.exit_code == 0 and result.stdout.strip() == "job/j1 deleted"
    again = accord("delete", "jobs", "j1", node_dir=node.dir)
    assert again.exit_code == 1 and again.stderr.strip() == "error [11202]: Job 'j1' not found"


# -- watch / logs / audit --------------------------------------------------------------------------------


def test_watch_lists_then_follows(node: RunningNode) -> None:
    applied(node, ("j1", "risk"), ("j2", "ops"))
    result = accord("watch", "jobs", "--max-events", "2", node_dir=node.dir)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ADDED", "job/j1", "Initialized"],
        ["ADDED", "job/j2", "Initialized"],
    ]
    history = accord("watch", "job", "--since", "0", "-o", "json", "--max-events", "1", node_dir=node.dir)
    event = json.loads(history.stdout)
    assert (event["type"], event["name"], event["revision"]) == ("ADDED", "j1", 1)


async def _seed_task(node: RunningNode, name: str) -> None:
    task = Task(
        meta=ObjectMeta(name=name, domain="alice"),
        spec=TaskSpec(
            job="j", alias="a", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = TaskPhase.FAILED
    await node.services.store.create(task)


def test_logs(node: RunningNode) -> None:
    node.run(_seed_task(node, "t1"))
    log_file = node.services.settings.tasks_dir / "t1" / "engine.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("[engine] started\n[engine] failed: boom\n")
    result = accord("logs", "t1", "--follow", node_dir=node.dir)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "[engine] started\n[engine] failed: boom\n"
    missing = accord("logs", "nope", node_dir=node.dir)
    assert missing.exit_code == 1 and missing.stderr.strip() == "error [11220]: Task 'nope' not found"


async def _tamper_first_audit_record(node: RunningNode) -> None:
    store = node.services.store
    record = await store.get("AuditRecord", "audit-000000000001")
    assert isinstance(record, AuditRecord)
    record.spec.actor = "mallory"
    await store.update(record)


def test_audit_verify_ok_then_broken(node: RunningNode) -> None:
    applied(node, ("j1", "risk"), ("j2", "ops"))
    ok = accord("audit", "verify", node_dir=node.dir)
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.startswith("audit chain OK: 2 records, head ")
    node.run(_tamper_first_audit_record(node))
    broken = accord("audit", "verify", node_dir=node.dir)
    assert broken.exit_code == 1
    assert broken.stderr.strip() == (
        "error [13302]: audit chain BROKEN at record seq 1: record 1: hash mismatch (content changed) "
        "(2 records checked)"
    )


# -- node ------------------------------------------------------------------------------------------------


def test_node_status(node: RunningNode) -> None:
    result = accord("node", "status", node_dir=node.dir)
    assert result.exit_code == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert fields["domain"].strip() == "alice"
    assert fields["store"].strip() == "MemoryStore"
    assert fields["revision"].strip() == "0"
    assert {"version", "modules", "isolation", "api"} <= set(fields)


def test_node_status_when_down(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "accord.toml").write_text(f'domain = "alice"\napi_port = {port}\n')
    (tmp_path / "token").write_text(TOKEN)
    result = accord("node", "status", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error [11103]: the node at http://127.0.0.1:{port} is not running "
        f"(start it with `accord node start --dir {tmp_path.resolve()}`)"
    )


def test_node_init_and_refusing_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "bob"
    result = accord("node", "init", "--domain", "bob", "--dir", str(target), "--api-port", "9123")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"initialised node bob in {target.resolve()}")
    assert "http://127.0.0.1:9123" in result.stdout
    assert (target / "token").exists() and (target / "domain.crt").exists()
    again = accord("node", "init", "--domain", "bob", "--dir", str(target))
    assert again.exit_code == 1 and "already an Accord node directory; use --force" in again.stderr
    bad = accord("node", "init", "--domain", "Bad_Domain", "--dir", str(tmp_path / "x"))
    assert bad.exit_code == 1 and "'Bad_Domain' is not a DNS label" in bad.stderr


def test_node_start_needs_an_initialised_dir(tmp_path: Path) -> None:
    result = accord("node", "start", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "is not an Accord node directory" in result.stderr and "accord node init" in result.stderr
