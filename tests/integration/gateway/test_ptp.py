"""The BFIA transport (PTP) over two real gateways: push/pop between engine processes, and its policy."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

from accord.gateway import GatewayConfig
from accord.gateway.ptp import (
    FORBIDDEN,
    NOT_FOUND,
    OK,
    QUEUE_FULL,
    SESSION_RELEASED,
    TOO_LARGE,
    decode_outbound,
)
from tests.integration.gateway.harness import GatewayNode, mesh

ENGINE = str(Path(__file__).with_name("ptp_engine.py"))
MiB = 1 << 20


async def _pair(nodes, config: GatewayConfig | None = None) -> tuple[GatewayNode, GatewayNode]:
    alice = await nodes("alice", config=config)
    bob = await nodes("bob", config=config)
    await mesh(alice, bob)
    await alice.route("bob", bob.endpoint)
    await bob.route("alice", alice.endpoint)
    return alice, bob


async def ptp(
    node: GatewayNode,
    method: str,
    *,
    session: str = "job1-psi",
    topic: str = "t",
    target: str = "",
    body: bytes = b"",
    timeout: float | None = None,
    source: str = "",
) -> tuple[bytes, str, str]:
    headers = {"x-ptp-session-id": session, "x-ptp-topic": topic, "x-ptp-target-node-id": target}
    if source:
        headers["x-ptp-source-node-id"] = source
    query = f"?timeout={timeout:g}" if timeout is not None else ""
    async with httpx.AsyncClient(base_url=node.egress, timeout=30) as client:
        r = await client.post(f"/v1/interconn/chan/{method}{query}", headers=headers, content=body)
    assert r.status_code == 200, r.text
    return decode_outbound(r.content)


async def test_two_engines_exchange_100_mb_both_ways(nodes) -> None:
    alice, bob = await _pair(nodes)
    for node in (alice, bob):
        node.registry.register_session("job1-psi", parties={"alice", "bob"}, task="job1-psi")
    count, size = 100, MiB

    async def engine(node: GatewayNode, me: str, peer: str) -> dict[str, object]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            ENGINE,
            str(node.gateway.egress_port),
            me,
            peer,
            "job1-psi",
            str(count),
            str(size),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 150)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return dict(json.loads(out))

    results = await asyncio.gather(engine(alice, "alice", "bob"), engine(bob, "bob", "alice"))
    for result in results:
        assert result["error"] == "", result
        assert result["sent"] == result["received"] == count * size
    assert alice.gateway.ptp.hub.total == bob.gateway.ptp.hub.total == 0  # everything was popped


async def test_pop_long_polls_until_a_push_arrives(nodes) -> None:
    alice, bob = await _pair(nodes)
    for node in (alice, bob):
        node.registry.register_session("job1-psi", parties={"alice", "bob"})
    waiting = asyncio.create_task(ptp(bob, "pop", target="alice", timeout=20))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert (await ptp(alice, "push", target="bob", body=b"hello"))[1] == OK
    payload, code, _ = await asyncio.wait_for(waiting, 10)
    assert (payload, code) == (b"hello", OK)
    assert await ptp(bob, "pop", target="alice", timeout=0) == (b"", OK, "")  # nothing yet


async def test_push_naming_another_jobs_session_is_refused(nodes) -> None:
    alice, bob = await _pair(nodes)
    # job1 runs at alice with bob; at bob the session id job1-psi belongs to a job with carol only
    alice.registry.register_session("job1-psi", parties={"alice", "bob"})
    bob.registry.register_session("job1-psi", parties={"bob", "carol"})
    bob.registry.register_session("job2-lr", parties={"bob", "carol"})
    _, code, message = await ptp(alice, "push", target="bob", body=b"x")
    assert code == FORBIDDEN and "alice is not a party" in message
    # a session alice has no task for is refused before it leaves alice
    _, code, message = await ptp(alice, "push", session="job2-lr", target="bob", body=b"x")
    assert code == NOT_FOUND and "no running task" in message
    assert bob.gateway.ptp.hub.total == 0
    # the source is the TLS identity: claiming another node id is refused
    _, code, _ = await ptp(alice, "push", target="bob", body=b"x", source="carol")
    assert code == FORBIDDEN


async def test_queue_full_then_room_after_pop(nodes) -> None:
    alice, bob = await _pair(nodes, GatewayConfig(ptp_session_limit=MiB, ptp_max_message=MiB))
    for node in (alice, bob):
        node.registry.register_session("s1", parties={"alice", "bob"})
    chunk = b"x" * (600 * 1024)
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=0))[1] == OK
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=0))[1] == QUEUE_FULL
    assert (await ptp(alice, "push", session="s1", target="bob", body=b"y" * (MiB + 1)))[1] == TOO_LARGE
    assert (await ptp(bob, "pop", session="s1", target="alice"))[0] == chunk
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=0))[1] == OK
    assert (await ptp(bob, "peek", session="s1", target="alice"))[0] == chunk


async def test_session_end_releases_queues_and_pollers(nodes) -> None:
    alice, bob = await _pair(nodes)
    for node in (alice, bob):
        node.registry.register_session("s1", parties={"alice", "bob"}, task="task-1")
    assert (await ptp(alice, "push", session="s1", target="bob", body=b"m1"))[1] == OK
    assert bob.gateway.ptp.hub.total == 2
    waiting = asyncio.create_task(ptp(bob, "pop", session="s1", topic="other", target="alice", timeout=20))
    await asyncio.sleep(0.2)
    bob.registry.unregister_task("task-1")
    assert (await asyncio.wait_for(waiting, 10))[1] == SESSION_RELEASED
    assert bob.gateway.ptp.hub.total == 0
    assert (await ptp(alice, "push", session="s1", target="bob", body=b"m2"))[1] == NOT_FOUND


async def test_release_by_the_engine(nodes) -> None:
    alice, bob = await _pair(nodes)
    for node in (alice, bob):
        node.registry.register_session("s1", parties={"alice", "bob"})
    await ptp(alice, "push", session="s1", topic="a", target="bob", body=b"1")
    await ptp(alice, "push", session="s1", topic="b", target="bob", body=b"2")
    assert (await ptp(bob, "release", session="s1", topic="a", target="alice"))[1] == OK
    assert await ptp(bob, "peek", session="s1", topic="a", target="alice") == (b"", OK, "")
    assert (await ptp(bob, "peek", session="s1", topic="b", target="alice"))[0] == b"2"
    assert (await ptp(bob, "release", session="s1", topic=""))[1] == OK
    assert (await ptp(bob, "pop", session="s1", topic="b", target="alice", timeout=0))[1] == SESSION_RELEASED


async def test_peers_may_only_push(nodes) -> None:
    alice, bob = await _pair(nodes)
    bob.registry.register_session("s1", parties={"alice", "bob"})
    request = (
        b"POST /v1/interconn/chan/pop HTTP/1.1\r\nHost: transport.bob.svc\r\nx-ptp-session-id: s1\r\n"
        b"x-ptp-topic: t\r\nx-ptp-target-node-id: alice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", bob.gateway.public_port, ssl=alice.tls_client_context()
    )
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    _, body = raw.split(b"\r\n\r\n", 1)
    assert decode_outbound(body)[1] == FORBIDDEN


async def _raw_request(port: int, request: bytes) -> asyncio.StreamWriter:
    """An engine's request on a connection of its own (to drop it midway, as a client that gives up)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return writer


def _raw_head(method: str, *, session: str, target: str, timeout: float, length: int = 0) -> bytes:
    return (
        f"POST /v1/interconn/chan/{method}?timeout={timeout:g} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-ptp-session-id: {session}\r\nx-ptp-topic: t\r\nx-ptp-target-node-id: {target}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_pop_whose_engine_left_does_not_lose_the_next_message(nodes) -> None:
    alice, bob = await _pair(nodes)
    for node in (alice, bob):
        node.registry.register_session("job1-psi", parties={"alice", "bob"})
    head = _raw_head("pop", session="job1-psi", target="alice", timeout=20)
    writer = await _raw_request(bob.gateway.egress_port, head)
    await asyncio.sleep(0.2)  # the pop is waiting at bob...
    writer.close()  # ...when its client gives up
    await writer.wait_closed()
    await asyncio.sleep(0.2)
    assert (await ptp(alice, "push", target="bob", body=b"hello"))[1] == OK
    assert await ptp(bob, "pop", target="alice", timeout=5) == (b"hello", OK, "")


async def test_a_forwarded_push_waiting_for_room_is_dropped_when_its_engine_leaves(nodes) -> None:
    alice, bob = await _pair(nodes, GatewayConfig(ptp_session_limit=MiB, ptp_max_message=MiB))
    for node in (alice, bob):
        node.registry.register_session("s1", parties={"alice", "bob"})
    chunk = b"x" * (600 * 1024)
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=0))[1] == OK
    head = _raw_head("push", session="s1", target="bob", timeout=20, length=len(chunk))
    writer = await _raw_request(alice.gateway.egress_port, head + b"y" * len(chunk))
    await asyncio.sleep(0.5)  # forwarded to bob, where it waits for room...
    writer.close()  # ...when the engine gives up (it would push it again)
    await writer.wait_closed()
    for _ in range(50):  # the disconnect reaches bob: alice closes the forward
        stats = bob.gateway.ptp.hub.stats("s1")
        if stats is not None and stats.dropped:
            break
        await asyncio.sleep(0.1)
    assert (await ptp(bob, "pop", session="s1", target="alice", timeout=5))[0] == chunk
    assert await ptp(bob, "pop", session="s1", target="alice", timeout=1) == (b"", OK, "")  # not queued
    assert bob.gateway.ptp.hub.total == 0
    # the link is usable afterwards
    assert (await ptp(alice, "push", session="s1", target="bob", body=b"z", timeout=0))[1] == OK
    assert (await ptp(bob, "pop", session="s1", target="alice", timeout=5))[0] == b"z"


async def test_long_polls_are_answered_before_their_timeout(nodes) -> None:
    alice, bob = await _pair(nodes, GatewayConfig(ptp_session_limit=MiB, ptp_max_message=MiB))
    for node in (alice, bob):
        node.registry.register_session("s1", parties={"alice", "bob"})
    started = time.monotonic()
    assert await ptp(bob, "pop", session="s1", target="alice", timeout=2) == (b"", OK, "")
    assert 1.0 < time.monotonic() - started < 2.0
    chunk = b"x" * (600 * 1024)
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=0))[1] == OK
    started = time.monotonic()
    assert (await ptp(alice, "push", session="s1", target="bob", body=chunk, timeout=2))[1] == QUEUE_FULL
    assert 1.0 < time.monotonic() - started < 2.0
