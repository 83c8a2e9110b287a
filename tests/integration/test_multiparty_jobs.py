"""Cross-domain jobs with three real nodes on loopback: alice (initiator), bob and carol.

The nodes are real `accord node start` processes (shared by the module: starting them is the slow part),
made partners of each other as two administrators would (pinned certificates, routes both ways, Ready).
Engines are real: the built-in `hello` and `chat` (`chat_engine.py`), a tiny engine whose parties really
greet each other through the gateway egress.  carol has `enable_approval = true` with an approval policy
(the Domain alice at carol auto-approves `hello` and `chat`); the AppImage `gated` is not covered, so
jobs using it wait for carol's decision.  Waits are bounded; nothing asserts on durations.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from accord.client.jobs import approve_job, delete_job, job_command, submit_job
from accord.errors import Conflict, InvalidArgument, NotFound
from accord.runtimes.process import ProcessRuntime
from tests.nodes import NodeProcess, connect, eventually

ENGINE = Path(__file__).with_name("chat_engine.py")
FAST = {"route_probe_seconds": 1.0}
FINAL = ("Succeeded", "Failed", "ApprovalReject", "Cancelled")
LIMIT = 90.0

pytestmark = pytest.mark.slow


@dataclass
class Mesh:
    alice: NodeProcess
    bob: NodeProcess
    carol: NodeProcess

    @property
    def nodes(self) -> list[NodeProcess]:
        return [self.alice, self.bob, self.carol]


def _add_images(node: NodeProcess, *, gated: bool) -> None:
    client = node.client
    client.create(
        {
            "kind": "AppImage",
            "meta": {"name": "chat"},
            "spec": {
                "command": [sys.executable, str(ENGINE)],
                "ports": [{"name": "msg", "protocol": "HTTP", "scope": "Cluster"}],
            },
        }
    )
    if gated:
        hello = client.get("AppImage", "hello")
        client.create({"kind": "AppImage", "meta": {"name": "gated"}, "spec": hello["spec"]})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("mesh")
    nodes = Mesh(
        NodeProcess(base / "alice", "alice", settings=FAST),
        NodeProcess(base / "bob", "bob", settings=FAST),
        NodeProcess(base / "carol", "carol", settings={**FAST, "enable_approval": True}),
    )
    try:
        for node in nodes.nodes:
            node.start(wait=False)
        for node in nodes.nodes:
            node.wait_ready()
        connect(*nodes.nodes)
        _add_images(nodes.alice, gated=True)
        _add_images(nodes.bob, gated=False)
        _add_images(nodes.carol, gated=True)
        client = nodes.carol.client
        alice_at_carol = client.get("Domain", "alice")
        alice_at_carol["meta"]["annotations"]["accord/auto-approve-apps"] = "hello,chat"
        client.replace(alice_at_carol)
        nodes.alice.client.create(
            {"kind": "AppImage", "meta": {"name": "alice-only"}, "spec": {"command": ["true"]}}
        )
        yield nodes
    finally:
        for node in nodes.nodes:
            try:
                node.stop()
            except AssertionError:
                node.kill()
        for node in nodes.nodes:  # engines run in their own sessions: stop what a test left behind
            runtime = ProcessRuntime(node.settings)
            for task in _run(runtime.running_tasks()):
                _run(runtime.stop(task, grace=1.0))


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


# -- helpers ------------------------------------------------------------------------------------------


def task(
    alias: str, app: str, parties: list[str], config: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "alias": alias,
        "app_image": app,
        "parties": [{"domain": d} for d in parties],
        "input_config": json.dumps(config or {}),
        **extra,
    }


def job(name: str, *tasks: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Job",
        "meta": {"name": name},
        "spec": {"initiator": "alice", "tasks": list(tasks), **spec},
    }


def status(node: NodeProcess, kind: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = node.client.get(kind, name)["status"]
    return doc


def wait_job(node: NodeProcess, name: str, phases: tuple[str, ...] = FINAL) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = status(node, "Job", name)
        return s if s["phase"] in phases else None

    result: dict[str, Any] = eventually(
        reached, timeout=LIMIT, what=f"job {name} at {node.domain} in {phases}"
    )
    return result


def wait_task(node: NodeProcess, name: str, check: Any, what: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = status(node, "Task", name)
        return s if check(s) else None

    result: dict[str, Any] = eventually(reached, timeout=LIMIT, what=f"task {name} at {node.domain}: {what}")
    return result


def party(task_status: dict[str, Any], domain: str) -> dict[str, Any]:
    return next(p for p in task_status["parties"] if p["domain"] == domain)


def all_running(s: dict[str, Any]) -> bool:
    return s["phase"] == "Running" and all(p["phase"] == "Running" for p in s["parties"])


def own_party_done(domain: str) -> Any:
    return lambda s: party(s, domain)["phase"] in ("Succeeded", "Failed")


# -- the happy path with a tolerable failure -----------------------------------------------------------


def test_three_party_dag_with_a_tolerable_failure_succeeds(mesh: Mesh) -> None:
    doc = job(
        "dag3",
        task("greet", "chat", ["alice", "bob", "carol"]),
        task(
            "optional",
            "chat",
            ["alice", "carol"],
            {"exit_code": {"carol": 3}},
            dependencies=["greet"],
            tolerable=True,
        ),
        task("final", "hello", ["alice", "bob"], {"numbers": [1, 2, 3]}, dependencies=["greet"]),
        max_parallelism=2,
    )
    submit_job(mesh.alice.client, doc)
    done = wait_job(mesh.alice, "dag3")
    assert done["phase"] == "Succeeded", done
    assert "tolerable task 'optional' failed" in done["message"]
    assert done["task_status"] == {"greet": "Succeeded", "optional": "Failed", "final": "Succeeded"}
    assert done["task_messages"]["optional"].startswith("party carol: engine exited with code 3")

    greet = status(mesh.alice, "Task", "dag3-greet")
    assert [p["phase"] for p in greet["parties"]] == ["Succeeded"] * 3
    assert party(greet, "bob")["endpoints"] == {"msg": "dag3-greet-0-msg.bob.svc"}
    for node in mesh.nodes:  # each party greeted the others through the gateways, which named the sender
        result = json.loads((node.dir / "tasks" / "dag3-greet" / "result.json").read_text())
        others = sorted({"alice", "bob", "carol"} - {node.domain})
        assert result["greeted_by"] == others
        assert {peer: answer["asked_by"] for peer, answer in result["answers"].items()} == {
            peer: node.domain for peer in others
        }
    for node in (mesh.bob, mesh.carol):
        mirror = wait_job(node, "dag3")
        assert mirror["phase"] == "Succeeded" and mirror["task_status"] == done["task_status"]
    assert status(mesh.carol, "Job", "dag3")["approve_messages"]["carol"].startswith(
        "auto-approved by policy"
    )
    optional_at_carol = status(mesh.carol, "Task", "dag3-optional")
    assert party(optional_at_carol, "carol")["exit_code"] == 3
    with pytest.raises(NotFound):
        mesh.bob.client.get("Task", "dag3-optional")  # bob is not a party of that task


# -- failures: Strict vs BestEffort ---------------------------------------------------------------------


def test_strict_stops_at_once_and_best_effort_finishes_independent_work(mesh: Mesh) -> None:
    bad = task("bad", "chat", ["alice", "bob"], {"exit_code": {"bob": 2}})
    submit_job(
        mesh.alice.client,
        job("strict", bad, task("slow", "hello", ["alice", "bob"], {"sleep": 60}), max_parallelism=2),
    )
    submit_job(
        mesh.alice.client,
        job(
            "effort",
            bad,
            task("other", "hello", ["alice", "bob"], {"sleep": 1}),
            task("after-bad", "hello", ["alice", "bob"], dependencies=["bad"]),
            task("after-other", "hello", ["alice", "bob"], dependencies=["other"]),
            schedule_mode="BestEffort",
            max_parallelism=2,
        ),
    )
    strict = wait_job(mesh.alice, "strict")
    assert strict["phase"] == "Failed"
    bob_failed = "critical task 'bad' failed (bad: party bob: engine exited with code 2"
    assert strict["message"].startswith(bob_failed)
    assert strict["task_messages"]["bad"].startswith("party bob: engine exited with code 2")
    slow = status(mesh.alice, "Task", "strict-slow")
    assert slow["phase"] == "Failed" and slow["message"].startswith("stopped: job 'strict' failed")
    slow_at_bob = wait_task(mesh.bob, "strict-slow", own_party_done("bob"), "bob's engine stopped")
    assert party(slow_at_bob, "bob")["phase"] == "Failed"
    assert party(slow_at_bob, "bob")["message"].startswith("stopped")

    effort = wait_job(mesh.alice, "effort")
    assert effort["phase"] == "Failed"
    assert effort["message"].startswith(bob_failed)
    assert effort["task_status"] == {"bad": "Failed", "other": "Succeeded", "after-other": "Succeeded"}
    with pytest.raises(NotFound):
        mesh.alice.client.get("Task", "effort-after-bad")  # a descendant of a failed task never runs


# -- approval --------------------------------------------------------------------------------------------


def test_approval_reject_ends_the_job_and_approve_runs_it(mesh: Mesh) -> None:
    submit_job(mesh.alice.client, job("gate-no", task("t", "gated", ["alice", "carol"])))
    assert wait_job(mesh.alice, "gate-no", ("AwaitingApproval",))["approve_status"]["carol"] == "Pending"
    assert wait_job(mesh.carol, "gate-no", ("AwaitingApproval",))["phase"] == "AwaitingApproval"
    at_initiator = mesh.alice.cli("job", "approve", "gate-no")
    assert at_initiator.returncode == 1 and "11207" in at_initiator.stderr
    rejected = mesh.carol.cli("job", "reject", "gate-no", "--reason", "not today")
    assert rejected.returncode == 0, rejected.stderr
    assert "rejected here" in rejected.stdout
    final = wait_job(mesh.alice, "gate-no")
    assert final["phase"] == "ApprovalReject", final
    assert "carol" in final["message"] and "not today" in final["message"]
    assert wait_job(mesh.carol, "gate-no")["phase"] == "ApprovalReject"
    assert mesh.alice.client.list("Task", selector="accord/job=gate-no")["items"] == []

    submit_job(mesh.alice.client, job("gate-yes", task("t", "gated", ["alice", "carol"], {"numbers": [2]})))
    wait_job(mesh.carol, "gate-yes", ("AwaitingApproval",))
    approve_job(mesh.carol.client, "gate-yes", "fine")
    assert wait_job(mesh.alice, "gate-yes")["phase"] == "Succeeded"
    again = mesh.carol.cli("job", "reject", "gate-yes")
    assert again.returncode == 1 and "already decided" in again.stderr


# -- stage commands issued at a participant --------------------------------------------------------------


def test_stop_suspend_restart_issued_at_a_participant(mesh: Mesh) -> None:
    submit_job(mesh.alice.client, job("cmds", task("long", "hello", ["alice", "bob"], {"sleep": 60})))
    first = wait_task(mesh.alice, "cmds-long", all_running, "every party running")
    first_uid = mesh.alice.client.get("Task", "cmds-long")["meta"]["uid"]
    assert first["phase"] == "Running"

    suspended = mesh.bob.cli("job", "suspend", "cmds", "--reason", "maintenance")
    assert suspended.returncode == 0, suspended.stderr
    assert "Suspended" in suspended.stdout and "by bob" in suspended.stdout
    assert status(mesh.alice, "Job", "cmds")["phase"] == "Suspended"
    assert wait_job(mesh.bob, "cmds", ("Suspended",))["stage"]["stage"] == "Suspend"
    wait_task(mesh.bob, "cmds-long", own_party_done("bob"), "bob's engine stopped by the suspension")
    again = mesh.bob.cli("job", "suspend", "cmds")
    assert again.returncode == 1 and "11210" in again.stderr

    restarted = job_command(mesh.bob.client, "cmds", "restart")
    assert restarted["phase"] == "Running" and restarted["stage"]["stage"] == "Restart"

    def rerun() -> bool:
        doc = mesh.alice.client.get("Task", "cmds-long")
        return doc["meta"]["uid"] != first_uid and all_running(doc["status"])

    eventually(rerun, timeout=LIMIT, what="a new run of the task at every party")
    with pytest.raises(Conflict) as refused:
        job_command(mesh.bob.client, "cmds", "restart")
    assert int(refused.value.code) == 11211

    stopped = job_command(mesh.bob.client, "cmds", "stop", "enough")
    assert stopped["phase"] == "Failed"
    final = status(mesh.alice, "Job", "cmds")
    assert final["reason"] == "Stop" and final["message"] == "stopped by bob: enough"
    wait_task(mesh.bob, "cmds-long", own_party_done("bob"), "bob's engine stopped by the stop")

    delete_job(mesh.bob.client, "cmds")
    for node in (mesh.alice, mesh.bob):
        eventually(
            lambda node=node: all(j["meta"]["name"] != "cmds" for j in node.client.list("Job")["items"]),
            timeout=LIMIT,
            what=f"job cmds deleted at {node.domain}",
        )


# -- a participant crashes mid-task ----------------------------------------------------------------------


def test_participant_killed_mid_task_resumes_its_engine(mesh: Mesh) -> None:
    submit_job(mesh.alice.client, job("crash", task("work", "hello", ["alice", "bob"], {"sleep": 5})))
    wait_task(mesh.alice, "crash-work", all_running, "every party running")
    mesh.bob.kill()
    assert status(mesh.alice, "Job", "crash")["phase"] == "Running"
    mesh.bob.start()
    done = wait_job(mesh.alice, "crash")
    assert done["phase"] == "Succeeded", done
    assert wait_job(mesh.bob, "crash")["phase"] == "Succeeded"
    log = (mesh.bob.dir / "tasks" / "crash-work" / "engine.log").read_text()
    assert log.count("hello: task crash-work in domain bob starts") == 1  # adopted, not started twice


# -- a party that refuses or never prepares --------------------------------------------------------------


def test_a_refusing_participant_fails_the_job_naming_it(mesh: Mesh) -> None:
    submit_job(mesh.alice.client, job("refused", task("t", "alice-only", ["alice", "bob"])))
    final = wait_job(mesh.alice, "refused")
    assert final["phase"] == "Failed" and final["reason"] == "PartyRefused"
    assert (
        "bob refused the job" in final["message"] and "'alice-only' is not known at bob" in final["message"]
    )
    with pytest.raises(NotFound):
        mesh.bob.client.get("Job", "refused")


def test_a_party_that_never_prepares_fails_the_task_within_the_reservation_timeout(mesh: Mesh) -> None:
    reserve = {"task_timeout_seconds": 60, "resource_reserved_seconds": 3}
    submit_job(
        mesh.alice.client,
        job(
            "silent",
            task("first", "hello", ["alice"], {"sleep": 3}),
            task("second", "hello", ["alice", "carol"], dependencies=["first"], schedule_config=reserve),
        ),
    )
    wait_task(mesh.alice, "silent-first", lambda s: s["phase"] == "Running", "the first task running")
    assert status(mesh.alice, "Job", "silent")["approve_status"]["carol"] == "JobAccepted"
    mesh.carol.stop()
    try:
        final = wait_job(mesh.alice, "silent")
        assert final["phase"] == "Failed", final
        second = status(mesh.alice, "Task", "silent-second")
        assert second["phase"] == "Failed"
        assert (
            second["message"].startswith("party carol") and "did not prepare within 3 s" in second["message"]
        )
        assert party(second, "alice")["phase"] == "Failed"  # alice released what she had reserved
    finally:
        mesh.carol.start()
    assert wait_job(mesh.carol, "silent", ("Failed",))["task_status"]["second"] == "Failed"


def test_engines_that_never_connect_fail_by_the_task_timeout(mesh: Mesh) -> None:
    config = {"hang": {"bob": True}, "connect_timeout": 600}
    timeout = {"task_timeout_seconds": 6, "resource_reserved_seconds": 30}
    submit_job(
        mesh.alice.client, job("hung", task("t", "chat", ["alice", "bob"], config, schedule_config=timeout))
    )
    final = wait_job(mesh.alice, "hung")
    assert final["phase"] == "Failed"
    assert "did not finish within 6 s (task_timeout_seconds)" in final["task_messages"]["t"]
    stopped = wait_task(mesh.bob, "hung-t", own_party_done("bob"), "bob's hanging engine stopped")
    assert party(stopped, "bob")["message"].startswith("stopped")
    alice_task = status(mesh.alice, "Task", "hung-t")
    assert party(alice_task, "alice")["phase"] == "Failed"


# -- refused at submit -----------------------------------------------------------------------------------


def test_submit_refuses_cycles_unknown_parties_and_foreign_initiators(mesh: Mesh) -> None:
    client = mesh.alice.client
    cyclic = job(
        "loop",
        task("a", "hello", ["alice", "bob"], dependencies=["b"]),
        task("b", "hello", ["alice", "bob"], dependencies=["a"]),
    )
    for send in (lambda d: submit_job(client, d), client.create):
        with pytest.raises(InvalidArgument) as err:
            send(cyclic)
        assert int(err.value.code) == 11204 and "cycle" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        submit_job(client, job("stranger", task("a", "hello", ["alice", "dave"])))
    assert int(err.value.code) == 11206 and "'dave' is not a known domain" in err.value.message
    foreign = job("theirs", task("a", "hello", ["alice", "bob"]))
    foreign["spec"]["initiator"] = "bob"
    with pytest.raises(InvalidArgument) as err:
        submit_job(client, foreign)
    assert "submit it at bob's node" in err.value.message
    assert all(j["meta"]["name"] not in ("loop", "stranger", "theirs") for j in client.list("Job")["items"])


# -- KusciaAPI -------------------------------------------------------------------------------------------


def test_kuscia_job_routes(mesh: Mesh) -> None:
    settings = mesh.alice.settings
    token = settings.token_path.read_text().strip()
    with httpx.Client(base_url=settings.api_url, headers={"Token": token}, timeout=30) as http:

        def call(route: str, body: dict[str, Any]) -> dict[str, Any]:
            response = http.post(f"/api/v1/job/{route}", json=body)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        created = call(
            "create",
            {
                "job_id": "kjob",
                "initiator": "alice",
                "max_parallelism": 1,
                "tasks": [
                    {
                        "app_image": "hello",
                        "alias": "t1",
                        "task_input_config": json.dumps({"sleep": 60}),
                        "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}],
                    }
                ],
            },
        )
        assert created == {
            "status": {"code": 0, "message": "success", "details": []},
            "data": {"job_id": "kjob"},
        }
        wait_task(mesh.alice, "kjob-t1", all_running, "every party running")
        query = call("query", {"job_id": "kjob"})["data"]
        assert query["initiator"] == "alice" and query["tasks"][0]["alias"] == "t1"
        assert query["status"]["state"] == "Running"
        parties = query["status"]["tasks"][0]["parties"]
        assert [(p["domain_id"], p["state"]) for p in parties] == [("alice", "Running"), ("bob", "Running")]
        batch = call("status/batchQuery", {"job_ids": ["kjob"]})["data"]["jobs"]
        assert batch[0]["job_id"] == "kjob" and batch[0]["status"]["state"] == "Running"
        assert call("restart", {"job_id": "kjob"})["status"]["code"] == 11211
        assert (
            call("approve", {"job_id": "kjob", "result": "APPROVE_RESULT_ACCEPT"})["status"]["code"] == 11207
        )
        assert call("suspend", {"job_id": "kjob"})["status"]["code"] == 0
        assert call("query", {"job_id": "kjob"})["data"]["status"]["state"] == "Suspended"
        assert call("cancel", {"job_id": "kjob", "reason": "done"})["status"]["code"] == 0
        assert wait_job(mesh.bob, "kjob", ("Cancelled",))["phase"] == "Cancelled"
        assert call("delete", {"job_id": "kjob"})["status"]["code"] == 0
        for node in (mesh.alice, mesh.bob):
            eventually(
                lambda node=node: all(j["meta"]["name"] != "kjob" for j in node.client.list("Job")["items"]),
                timeout=LIMIT,
                what=f"kjob deleted at {node.domain}",
            )
        assert call("query", {"job_id": "kjob"})["status"]["code"] == 11202
        refused = call(
            "create",
            {
                "job_id": "kloop",
                "tasks": [
                    {
                        "app_image": "hello",
                        "alias": "a",
                        "dependencies": ["a"],
                        "parties": [{"domain_id": "alice"}],
                    }
                ],
            },
        )
        assert refused["status"]["code"] == 11204 and refused["data"] is None
