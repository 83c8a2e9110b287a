"""AccordClient against a real uvicorn server in a thread: every call, typed errors, streams."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from accord.api.testing import RunningNode, serve_node_dir
from accord.client import AccordClient
from accord.errors import (
    AlreadyExists,
    Conflict,
    ErrorCode,
    Gone,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from accord.resources import ObjectMeta, Party, Task, TaskPhase
from accord.resources.job import TaskSpec
from accord.store.memory import MemoryStore

TOKEN = "client-test-token"
JOB = """
kind: Job
meta: {name: %s, labels: {team: %s}}
spec:
  initiator: alice
  tasks:
    - {alias: a, app_image: hello, parties: [{domain: alice}]}
"""
KUSCIA_APPIMAGE = {
    "apiVersion": "kuscia.secretflow/v1alpha1",
    "kind": "AppImage",
    "metadata": {"name": "secretflow"},
    "spec": {"image": {"name": "secretflow/secretflow-lite", "tag": "1.0"}},
}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    with serve_node_dir(tmp_path / "alice", token=TOKEN, watch_heartbeat_seconds=0.05) as running:
        yield running


@pytest.fixture
def client(node: RunningNode) -> Iterator[AccordClient]:
    with AccordClient.from_node_dir(node.dir, timeout=10) as c:
        yield c


def test_health_and_node_info(client: AccordClient, node: RunningNode) -> None:
    assert client.base_url == node.url
    assert client.health() == {"status": "ok", "domain": "alice"}
    info = client.node_info()
    assert info["domain"] == "alice" and info["revision"] == 0


def test_resource_round_trip(client: AccordClient) -> None:
    assert client.apply(JOB % ("j1", "risk")) == [{"kind": "Job", "name": "j1", "action": "created"}]
    assert client.apply((JOB % ("j1", "risk")).encode()) == [
        {"kind": "Job", "name": "j1", "action": "unchanged"}
    ]
    created = client.create(KUSCIA_APPIMAGE)  # a Kuscia document goes to its Accord kind
    assert created["kind"] == "AppImage" and created["spec"]["image"]["tag"] == "1.0"
    job = client.get("jobs", "j1")
    assert job["spec"]["initiator"] == "alice"
    listing = client.list("Job")
    assert [i["meta"]["name"] for i in listing["items"]] == ["j1"] and listing["revision"] == 4
    assert client.list("job", selector="team=none")["items"] == []
    job["meta"]["labels"] = {"team": "ops"}
    replaced = client.replace(job)
    assert replaced["meta"]["labels"] == {"team": "ops"}
    deleted = client.delete("job", "j1", resource_version=replaced["meta"]["resource_version"])
    assert deleted["meta"]["name"] == "j1"
    assert client.audit_verify()["ok"] is True


def test_errors_come_back_typed(client: AccordClient) -> None:
    client.apply(JOB % ("j1", "risk"))
    with pytest.raises(NotFound) as missing:
        client.get("job", "nope")
    assert missing.value.code == ErrorCode.JOB_NOT_FOUND and missing.value.message == "Job 'nope' not found"
    image = {"kind": "AppImage", "meta": {"name": "x"}, "spec": {}}
    client.create(image)
    with pytest.raises(AlreadyExists) as exists:
        client.create(image)
    assert exists.value.code == ErrorCode.APPIMAGE_EXISTS
    job = client.get("job", "j1")
    job["meta"]["resource_version"] = 99
    job["meta"]["labels"] = {"team": "x"}
    with pytest.raises(Conflict) as stale:
        client.replace(job)
    assert "resource_version 99 is stale (current is 1)" in stale.value.message
    with pytest.raises(InvalidArgument) as malformed:
        client.apply("kind: [")
    assert malformed.value.code == ErrorCode.MALFORMED_DOCUMENT
    with pytest.raises(InvalidArgument) as unknown:
        client.list("gizmos")
    assert unknown.value.code == ErrorCode.UNKNOWN_KIND
    with pytest.raises(PermissionDenied):
        client.delete("audit", "audit-000000000001")
    with pytest.raises(InvalidArgument) as no_kind:
        client.create({"meta": {"name": "x"}})
    assert no_kind.value.message == "the document has no 'kind'"


def test_wrong_token_is_unauthenticated(node: RunningNode) -> None:
    with AccordClient(node.url, "wrong", timeout=10) as c, pytest.raises(Unauthenticated) as info:
        c.list("jobs")
    assert info.value.code == ErrorCode.UNAUTHENTICATED


def test_node_not_running_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with AccordClient(f"http://127.0.0.1:{port}", TOKEN, timeout=5, node_dir=tmp_path) as c:
        with pytest.raises(Unavailable) as info:
            c.health()
        assert info.value.code == ErrorCode.PEER_UNREACHABLE and info.value.retryable
        assert info.value.message == (
            f"the node at http://127.0.0.1:{port} is not running "
            f"(start it with `accord node start --dir {tmp_path}`)"
        )
        with pytest.raises(Unavailable):
            next(c.watch("jobs"))


def test_from_node_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as not_a_node:
        AccordClient.from_node_dir(tmp_path)
    assert "is not an Accord node directory" in not_a_node.value.message
    (tmp_path / "accord.toml").write_text('domain = "alice"\n')
    with pytest.raises(InvalidArgument) as no_token:
        AccordClient.from_node_dir(tmp_path)
    assert "token is missing" in no_token.value.message


def test_watch_after_a_list_misses_nothing(client: AccordClient) -> None:
    client.apply(JOB % ("j1", "risk"))
    revision = client.list("jobs")["revision"]
    client.apply(JOB % ("j2", "risk"))
    events = client.watch("jobs", since=revision)
    event = next(events)
    assert (event["type"], event["name"], event["revision"]) == ("ADDED", "j2", revision + 1)
    events.close()
    with_heartbeats = client.watch("jobs", since=client.list("jobs")["revision"], heartbeats=True)
    assert next(with_heartbeats) == {"type": "HEARTBEAT"}
    with_heartbeats.close()


def test_watch_gone_is_raised_typed(tmp_path: Path) -> None:
    with (
        serve_node_dir(tmp_path, token=TOKEN, store=MemoryStore(event_retention=2)) as node,
        AccordClient.from_node_dir(node.dir, timeout=10) as c,
    ):
        c.apply(JOB % ("j1", "a"))
        c.apply(JOB % ("j2", "a"))
        with pytest.raises(Gone) as info:
            next(c.watch("jobs", since=0))
    assert info.value.code == ErrorCode.WATCH_EXPIRED


async def _seed_task(node: RunningNode, name: str, phase: TaskPhase) -> None:
    task = Task(
        meta=ObjectMeta(name=name, domain="alice"),
        spec=TaskSpec(
            job="j", alias="a", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = phase
    await node.services.store.create(task)


def test_logs(client: AccordClient, node: RunningNode) -> None:
    node.run(_seed_task(node, "t1", TaskPhase.SUCCEEDED))
    log_file = node.services.settings.tasks_dir / "t1" / "engine.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("first\nsecond\n")
    assert "".join(client.logs("t1")) == "first\nsecond\n"
    assert "".join(client.logs("t1", follow=True)) == "first\nsecond\n"
    with pytest.raises(NotFound) as info:
        "".join(client.logs("nope"))
    assert info.value.code == ErrorCode.TASK_NOT_FOUND
