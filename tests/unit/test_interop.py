"""The interop protocol's rules, one node at a time: messages, the receiving side, commands, party merging.

Everything runs over a real MemoryStore and the real interop app (through httpx's ASGI transport); the
multi-node behaviour is in tests/integration/test_multiparty_jobs.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from pydantic import ValidationError

from accord.controllers.inbox import Inbox
from accord.controllers.party import LocalParty, judge, merge_party
from accord.errors import Conflict, ErrorCode, PermissionDenied, Unavailable
from accord.interop.client import SOURCE_HEADER, PeerClient, SendBook
from accord.interop.commands import apply_command, record_approval
from accord.interop.jobs import JobInbox
from accord.interop.messages import (
    ORIGIN_UID,
    JobCommand,
    JobProposal,
    JobState,
    JobSync,
    PartyJobReport,
    TaskPrepare,
    digest,
)
from accord.interop.server import build_interop_app
from accord.resources.appimage import AppImage, AppImageSpec
from accord.resources.domain import Domain, DomainRoute, DomainRouteSpec, DomainSpec
from accord.resources.job import Job, JobSpec, PartyStatus, TaskSpec
from accord.resources.meta import ObjectMeta
from accord.resources.phases import ApprovalState, JobPhase, TaskPhase
from accord.runtimes.process import ProcessRuntime
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore


def spec(*parties: str, app: str = "hello", initiator: str = "alice", **extra: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "initiator": initiator,
            "tasks": [{"alias": "t", "app_image": app, "parties": [{"domain": d} for d in parties]}],
            **extra,
        }
    )


async def node(
    me: str, *, routes: tuple[str, ...] = ("alice",), apps: tuple[str, ...] = ("hello",)
) -> MemoryStore:
    store = MemoryStore()
    for peer in ("alice", "bob", "carol"):
        if peer != me:
            await store.create(Domain(meta=ObjectMeta(name=peer), spec=DomainSpec(role="partner", cert="x")))
    for dest in routes:
        route = DomainRouteSpec(source=me, destination=dest, endpoint="https://127.0.0.1:1")
        await store.create(DomainRoute(meta=ObjectMeta(name=f"{me}-{dest}"), spec=route))
    for app in apps:
        await store.create(AppImage(meta=ObjectMeta(name=app), spec=AppImageSpec(command=["true"])))
    return store


# -- messages ---------------------------------------------------------------------------------------


def test_messages_refuse_an_unknown_protocol_version_and_digests_are_stable() -> None:
    with pytest.raises(ValidationError, match="protocol version 2 is not supported"):
        JobProposal.model_validate({"v": 2, "job": "j", "job_uid": "u", "spec": spec("alice").model_dump()})
    state = JobState(phase=JobPhase.RUNNING, task_status={"t": TaskPhase.RUNNING})
    assert digest(state) == digest(JobState.model_validate_json(state.model_dump_json()))
    assert digest(state) != digest(state.model_copy(update={"phase": JobPhase.FAILED}))


# -- the receiving side of a proposal ---------------------------------------------------------------------


async def test_a_participant_checks_a_proposal_on_its_own_terms() -> None:
    bob = JobInbox(await node("bob", routes=()), "bob", enable_approval=False)
    reply = await bob.propose(
        "alice", JobProposal(job="j", job_uid="u1", spec=spec("alice", "bob", app="psi"))
    )
    assert not reply.accepted
    assert (
        "no route to the initiator alice" in reply.reason
        and "AppImage 'psi' is not known at bob" in reply.reason
    )
    with pytest.raises(PermissionDenied, match="only the initiator may propose"):
        await bob.propose("carol", JobProposal(job="j", job_uid="u1", spec=spec("alice", "bob")))
    bob = JobInbox(await node("bob"), "bob", enable_approval=False)
    not_mine = await bob.propose("alice", JobProposal(job="j", job_uid="u1", spec=spec("alice", "carol")))
    assert not not_mine.accepted and "bob is not a party of the job" in not_mine.reason


async def test_an_accepted_proposal_becomes_a_mirror_and_a_repeat_gets_the_same_answer() -> None:
    store = await node("bob")
    bob = JobInbox(store, "bob", enable_approval=False)
    proposal = JobProposal(job="j", job_uid="u1", spec=spec("alice", "bob"))
    first = await bob.propose("alice", proposal)
    assert first.accepted and first.approval == ApprovalState.ACCEPTED
    assert await bob.propose("alice", proposal) == first
    mirror = cast(Job, await store.get("Job", "j"))
    assert mirror.meta.annotations[ORIGIN_UID] == "u1" and mirror.meta.labels["accord/initiator"] == "alice"
    clash = await bob.propose("alice", JobProposal(job="j", job_uid="u2", spec=spec("alice", "bob")))
    assert not clash.accepted and "already exists at bob" in clash.reason


async def test_approval_waits_for_a_decision_unless_a_policy_covers_the_job() -> None:
    store = await node("carol", apps=("hello", "psi"))
    carol = JobInbox(store, "carol", enable_approval=True)
    waiting = await carol.propose("alice", JobProposal(job="j1", job_uid="u1", spec=spec("alice", "carol")))
    assert waiting.accepted and waiting.approval == ApprovalState.PENDING
    assert (await store.get("Job", "j1")).status.phase == JobPhase.AWAITING_APPROVAL  # type: ignore[attr-defined]

    alice = cast(Domain, await store.get("Domain", "alice"))
    alice.meta.annotations["accord/auto-approve-apps"] = "hello"
    await store.update(alice)
    by_domain = await carol.propose("alice", JobProposal(job="j2", job_uid="u2", spec=spec("alice", "carol")))
    assert (
        by_domain.approval == ApprovalState.ACCEPTED and "auto-approve-apps covers hello" in by_domain.reason
    )
    psi = await carol.propose(
        "alice", JobProposal(job="j3", job_uid="u3", spec=spec("alice", "carol", app="psi"))
    )
    assert psi.approval == ApprovalState.PENDING

    image = cast(AppImage, await store.get("AppImage", "psi"))
    image.meta.annotations["accord/auto-approve-initiators"] = "bob,alice"
    await store.update(image)
    by_app = await carol.propose(
        "alice", JobProposal(job="j4", job_uid="u4", spec=spec("alice", "carol", app="psi"))
    )
    assert (
        by_app.approval == ApprovalState.ACCEPTED and "auto-approve-initiators covers alice" in by_app.reason
    )

    decided = await record_approval(store, "carol", "j1", False, "not today", "user")
    assert decided.status.approve_status["carol"] == ApprovalState.REJECTED
    with pytest.raises(Conflict, match="already decided"):
        await record_approval(store, "carol", "j1", True, "", "user")


async def test_a_sync_older_than_the_last_one_applied_is_ignored_and_own_approval_is_kept() -> None:
    store = await node("bob")
    bob = JobInbox(store, "bob", enable_approval=False)
    await bob.propose("alice", JobProposal(job="j", job_uid="u1", spec=spec("alice", "bob")))
    newer = JobState(phase=JobPhase.RUNNING, approve_status={"alice": ApprovalState.ACCEPTED})
    older = JobState(phase=JobPhase.PENDING, approve_status={"bob": ApprovalState.PENDING})
    reply = await bob.sync_job("alice", JobSync(job="j", job_uid="u1", revision=7, state=newer))
    assert reply.approval == ApprovalState.ACCEPTED
    await bob.sync_job("alice", JobSync(job="j", job_uid="u1", revision=5, state=older))
    mirror = cast(Job, await store.get("Job", "j"))
    assert mirror.status.phase == JobPhase.RUNNING
    assert mirror.status.approve_status == {"alice": ApprovalState.ACCEPTED, "bob": ApprovalState.ACCEPTED}
    with pytest.raises(PermissionDenied):
        await bob.sync_job("carol", JobSync(job="j", job_uid="u1", revision=9, state=newer))
    with pytest.raises(Conflict, match="another incarnation"):
        await bob.sync_job("alice", JobSync(job="j", job_uid="u0", revision=9, state=newer))


# -- at the initiator: reports and commands ----------------------------------------------------------


async def initiator_job(store: MemoryStore, phase: JobPhase, **status: Any) -> Job:
    job = Job(meta=ObjectMeta(name="j"), spec=spec("alice", "bob"))
    job.status.phase = phase
    for key, value in status.items():
        setattr(job.status, key, value)
    return await store.create(job)


async def test_reports_come_only_from_parties_and_an_approval_is_decided_once() -> None:
    store = MemoryStore()
    job = await initiator_job(
        store, JobPhase.AWAITING_APPROVAL, approve_status={"bob": ApprovalState.PENDING}
    )
    alice = JobInbox(store, "alice", enable_approval=False)
    with pytest.raises(PermissionDenied, match="carol is not a party"):
        await alice.report_job(
            "carol", PartyJobReport(job="j", job_uid=job.meta.uid, approval=ApprovalState.ACCEPTED)
        )
    await alice.report_job(
        "bob", PartyJobReport(job="j", job_uid=job.meta.uid, approval=ApprovalState.REJECTED)
    )
    await alice.report_job(
        "bob", PartyJobReport(job="j", job_uid=job.meta.uid, approval=ApprovalState.ACCEPTED)
    )
    assert (await store.get("Job", "j")).status.approve_status["bob"] == ApprovalState.REJECTED  # type: ignore[attr-defined]


async def test_stage_commands_follow_kuscia_guards_and_bump_the_stage_version() -> None:
    store = MemoryStore()
    await initiator_job(
        store,
        JobPhase.RUNNING,
        task_status={"a": TaskPhase.SUCCEEDED, "t": TaskPhase.RUNNING},
        task_messages={"a": "ok", "t": "step 2"},
    )
    with pytest.raises(Conflict) as refused:
        await apply_command(store, "alice", "j", JobCommand.RESTART, trigger="bob")
    assert refused.value.code == ErrorCode.JOB_RESTART_NOT_FAILED_OR_SUSPENDED
    suspended = await apply_command(store, "alice", "j", JobCommand.SUSPEND, trigger="bob", reason="lunch")
    assert suspended.status.phase == JobPhase.SUSPENDED and suspended.status.stage.version == 1
    assert suspended.status.message == "suspended by bob: lunch"
    with pytest.raises(Conflict) as again:
        await apply_command(store, "alice", "j", JobCommand.SUSPEND, trigger="alice")
    assert again.value.code == ErrorCode.JOB_SUSPEND_NOT_RUNNING
    restarted = await apply_command(store, "alice", "j", JobCommand.RESTART, trigger="alice")
    assert restarted.status.phase == JobPhase.RUNNING and restarted.status.stage.version == 2
    assert restarted.status.task_status == {"a": TaskPhase.SUCCEEDED}  # the rest runs again
    stopped = await apply_command(store, "alice", "j", JobCommand.STOP, trigger="bob")
    assert stopped.status.phase == JobPhase.FAILED and stopped.status.stage.version == 3
    same = await apply_command(store, "alice", "j", JobCommand.STOP, trigger="bob")
    assert same.status.stage.version == 3  # stopping a stopped job changes nothing
    cancelled = await apply_command(store, "alice", "j", JobCommand.CANCEL, trigger="alice")
    assert cancelled.status.phase == JobPhase.CANCELLED
    with pytest.raises(Conflict) as final:
        await apply_command(store, "alice", "j", JobCommand.STOP, trigger="alice")
    assert final.value.code == ErrorCode.JOB_STAGE_INVALID
    records = [r for r in await store.list("AuditRecord") if r.spec.action in ("suspend", "restart", "stop")]
    assert [r.spec.details["trigger"] for r in records] == ["bob", "alice", "bob"]


# -- party statuses ----------------------------------------------------------------------------------------


def test_a_party_only_moves_forward_and_the_first_failure_names_the_party() -> None:
    current = PartyStatus(domain="bob", phase=TaskPhase.RUNNING)
    assert not merge_party(current, PartyStatus(domain="bob", phase=TaskPhase.PREPARING))
    assert merge_party(
        current, PartyStatus(domain="bob", phase=TaskPhase.FAILED, message="engine exited with code 3")
    )
    assert not merge_party(current, PartyStatus(domain="bob", phase=TaskPhase.SUCCEEDED))
    alice = PartyStatus(domain="alice", phase=TaskPhase.SUCCEEDED, message="engine exited with code 0")
    assert judge([alice, current]) == (TaskPhase.FAILED, "party bob: engine exited with code 3")
    assert judge([alice]) == (TaskPhase.SUCCEEDED, "engine exited with code 0")
    assert judge([alice, alice.model_copy(update={"domain": "bob"})])[1] == "all 2 parties succeeded"
    assert judge([alice, PartyStatus(domain="bob", phase=TaskPhase.RUNNING)]) == (None, "")


# -- the interop API itself -------------------------------------------------------------------------------


@pytest.fixture
async def bob_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryStore]]:
    settings = NodeSettings(domain="bob", dir=tmp_path)
    store = await node("bob")
    inbox = Inbox(store, settings, LocalParty(store, settings, ProcessRuntime(settings)))
    transport = httpx.ASGITransport(app=build_interop_app(inbox, "bob"))
    async with httpx.AsyncClient(transport=transport, base_url="http://accord.bob.svc") as client:
        yield client, store


async def test_the_api_names_the_sender_only_from_the_gateway_header(
    bob_api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, _ = bob_api
    body = JobProposal(job="j", job_uid="u1", spec=spec("alice", "bob")).model_dump(mode="json")
    missing = await client.post("/interop/v1/jobs/propose", json=body)
    assert missing.status_code == 401 and missing.json()["code"] == 11102
    itself = await client.post("/interop/v1/jobs/propose", json=body, headers={SOURCE_HEADER: "bob"})
    assert itself.status_code == 403
    wrong_version = await client.post(
        "/interop/v1/jobs/propose", json={**body, "v": 9}, headers={SOURCE_HEADER: "alice"}
    )
    assert wrong_version.status_code == 400 and "protocol version 9" in wrong_version.json()["message"]
    ok = await client.post("/interop/v1/jobs/propose", json=body, headers={SOURCE_HEADER: "alice"})
    assert ok.status_code == 200 and ok.json()["accepted"] is True
    ping = await client.get("/interop/v1/ping", headers={SOURCE_HEADER: "alice"})
    assert ping.json()["you"] == "alice"


async def test_prepare_is_refused_for_a_job_this_node_has_not_approved(
    bob_api: tuple[httpx.AsyncClient, MemoryStore],
) -> None:
    client, store = bob_api
    task = TaskSpec(
        job="j",
        alias="t",
        initiator="alice",
        app_image="hello",
        parties=spec("alice", "bob").tasks[0].parties,
    )
    prepare = TaskPrepare(job="j", job_uid="u1", task="j-t", task_uid="t1", spec=task).model_dump(mode="json")
    answer = await client.post("/interop/v1/tasks/prepare", json=prepare, headers={SOURCE_HEADER: "alice"})
    assert answer.status_code == 200
    party = answer.json()["party"]
    assert party["phase"] == "Failed" and "job 'j' is not known at bob" in party["message"]
    forged = await client.post("/interop/v1/tasks/prepare", json=prepare, headers={SOURCE_HEADER: "carol"})
    assert forged.status_code == 403
    assert await store.list("Task") == []


# -- PeerClient ------------------------------------------------------------------------------------------


async def test_peer_client_types_gateway_refusals_and_peer_errors() -> None:
    answers = {
        b"/interop/v1/jobs/command": (
            b"409 Conflict",
            [],
            json.dumps({"code": 11210, "message": "job 'j' is Failed: only a Running job can be suspended"}),
        ),
        b"/interop/v1/jobs/report": (
            b"502 Bad Gateway",
            [b"X-Accord-Error: peer-unreachable", b"X-Accord-Error-Message: cannot connect to bob"],
            "{}",
        ),
    }

    async def fake_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        status, headers, body = answers[head.split(b" ")[1]]
        raw = body.encode()
        lines = [
            b"HTTP/1.1 " + status,
            *headers,
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(raw),
        ]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(fake_gateway, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    peers = PeerClient("alice", port, timeout=5)
    try:
        from accord.interop.messages import JobCommandRequest

        with pytest.raises(Conflict) as conflict:
            await peers.command("bob", JobCommandRequest(job="j", command=JobCommand.SUSPEND))
        assert conflict.value.code == ErrorCode.JOB_SUSPEND_NOT_RUNNING and conflict.value.message.startswith(
            "bob: "
        )
        with pytest.raises(Unavailable) as down:
            await peers.report_job(
                "bob", PartyJobReport(job="j", job_uid="u", approval=ApprovalState.ACCEPTED)
            )
        assert down.value.retryable and "peer-unreachable" in down.value.message
    finally:
        await peers.aclose()
        server.close()
        await server.wait_closed()
    closed = PeerClient("alice", port, timeout=2)
    with pytest.raises(Unavailable, match="egress port"):
        await closed.report_job("bob", PartyJobReport(job="j", job_uid="u", approval=ApprovalState.ACCEPTED))
    await closed.aclose()


def test_send_book_backs_off_and_forgets() -> None:
    book = SendBook(initial=10.0, maximum=40.0)
    assert book.due(("t", "bob"))
    assert book.failed(("t", "bob"), "down") == 10.0 and book.failed(("t", "bob"), "still down") == 20.0
    assert not book.due(("t", "bob")) and book.last_error(("t", "bob")) == "still down"
    assert 0 < (book.wait([("t", "bob"), ("t", "carol")]) or 0) <= 20.0
    book.forget(lambda key: key[0] == "t")  # type: ignore[index]
    assert book.due(("t", "bob")) and book.wait([("t", "bob")]) is None
