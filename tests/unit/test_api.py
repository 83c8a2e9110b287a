"""The HTTP API: auth, error shapes, resource routes, task routes (in-process ASGI) and streams (uvicorn)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from accord.api import create_app
from accord.api.testing import ServerThread
from accord.errors import ErrorCode
from accord.resources import ObjectMeta, Party, Task, TaskPhase
from accord.resources.job import TaskSpec
from accord.runtimes.contract import TOKEN_ANNOTATION, token_sha256
from accord.services import Services
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

TOKEN = "node-token-for-tests"
JOB = """
kind: Job
meta: {name: %s}
spec:
  initiator: alice
  tasks:
    - {alias: a, app_image: hello, parties: [{domain: alice}]}
"""
APPIMAGE = {"kind": "AppImage", "meta": {"name": "hello"}, "spec": {"command": ["python"]}}


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


@pytest.fixture
def app(store: MemoryStore, settings: NodeSettings) -> FastAPI:
    return create_app(Services.build(store=store, settings=settings), settings, TOKEN)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://node", headers={"Token": TOKEN}, timeout=10
    ) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


# -- auth and error shapes -------------------------------------------------------------------------------


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Token": ""})
    assert response.json() == {"status": "ok", "domain": "alice"}


async def test_missing_or_wrong_token_is_401(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/resources/jobs", headers={"Token": ""})
    assert_error(missing, 401, ErrorCode.UNAUTHENTICATED, "missing API token", "'Token' header")
    wrong = await client.get("/v1/resources/jobs", headers={"Token": "guess"})
    assert_error(wrong, 401, 11102, "wrong API token")
    watch = await client.get("/v1/watch/jobs", headers={"Token": "guess"})
    assert_error(watch, 401, 11102)


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/apply", "/v1/resources/{kind}", "/v1/resources/{kind}/{name}", "/v1/watch/{kind}"} <= set(
        spec["paths"]
    )
    assert {"NodeToken", "TaskToken"} <= set(spec["components"]["securitySchemes"])
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_request_validation_names_the_field(client: httpx.AsyncClient) -> None:
    bad_since = await client.get("/v1/watch/jobs", params={"since": "yesterday"})
    assert_error(bad_since, 400, ErrorCode.INVALID_ARGUMENT, "query parameter 'since'", "valid integer")
    bad_json = await client.post(
        "/v1/resources/appimages", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(bad_json, 400, 11100, "request body is not valid JSON")
    not_object = await client.post("/v1/resources/appimages", json=[1, 2])
    assert_error(not_object, 400, 11100, "request body", "dictionary")
    bad_version = await client.delete("/v1/resources/jobs/x", params={"resource_version": 0})
    assert_error(bad_version, 400, 11100, "query parameter 'resource_version'")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.get("/v1/nothing"), 404, ErrorCode.NOT_FOUND, "no such API route: GET /v1/nothing"
    )
    assert_error(await client.patch("/v1/apply"), 405, 11100, "method PATCH is not allowed on /v1/apply")


async def test_unexpected_error_is_500_generic_and_logged_once(
    store: MemoryStore, settings: NodeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(obj: Any) -> None:
        raise RuntimeError("secret internal detail /var/lib/x")

    services = Services.build(store=store, settings=settings, validators={"AppImage": broken})
    app = create_app(services, settings, TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://node", headers={"Token": TOKEN}
    ) as c:
        with caplog.at_level(logging.ERROR, logger="accord.api"):
            response = await c.post("/v1/resources/appimages", json=APPIMAGE)
    body = assert_error(response, 500, ErrorCode.UNKNOWN, "internal error")
    assert "secret" not in body["message"]
    logged = [r for r in caplog.records if r.name == "accord.api" and r.exc_info]
    assert len(logged) == 1 and "secret internal detail" in str(logged[0].exc_info[1])  # type: ignore[index]


# -- resources -------------------------------------------------------------------------------------------


async def test_apply_and_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/apply", content=JOB % "j1")
    assert response.json() == {"results": [{"kind": "Job", "name": "j1", "action": "created"}]}
    again = await client.post("/v1/apply", content=JOB % "j1")
    assert again.json()["results"][0]["action"] == "unchanged"
    malformed = await client.post("/v1/apply", content=b"kind: [")
    assert_error(malformed, 400, ErrorCode.MALFORMED_DOCUMENT, "malformed YAML at line")
    cycle = (JOB % "j2").replace(
        "parties: [{domain: alice}]}", "parties: [{domain: alice}], dependencies: [a]}"
    )
    assert_error(
        await client.post("/v1/apply", content=cycle), 400, ErrorCode.JOB_DAG_CYCLE, "depends on itself"
    )
    changed = (JOB % "j1").replace("app_image: hello", "app_image: other")
    assert_error(
        await client.post("/v1/apply", content=changed), 409, ErrorCode.CONFLICT, "delete and re-create"
    )


async def test_create_get_list_replace_delete(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/resources/appimages", json=APPIMAGE)
    assert created.status_code == 201
    doc = created.json()
    assert doc["meta"]["domain"] == "alice" and doc["meta"]["resource_version"] == 1
    assert_error(
        await client.post("/v1/resources/AppImage", json=APPIMAGE),
        409,
        ErrorCode.APPIMAGE_EXISTS,
        "already exists",
    )
    listing = (await client.get("/v1/resources/appimage")).json()
    assert [i["meta"]["name"] for i in listing["items"]] == ["hello"]
    assert listing["revision"] == 2  # the object and its audit record
    assert (await client.get("/v1/resources/appimages", params={"selector": "x=y"})).json()["items"] == []
    assert_error(
        await client.get("/v1/resources/gizmos"), 400, ErrorCode.UNKNOWN_KIND, "unknown kind 'gizmos'"
    )
    assert_error(
        await client.get("/v1/resources/jobs/nope"), 404, ErrorCode.JOB_NOT_FOUND, "Job 'nope' not found"
    )

    doc["spec"]["command"] = ["python3"]
    replaced = await client.put("/v1/resources/appimages/hello", json=doc)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["meta"]["generation"] == 2
    stale = await client.put("/v1/resources/appimages/hello", json=doc)
    assert_error(stale, 409, ErrorCode.CONFLICT, "resource_version 1 is stale")

    version = replaced.json()["meta"]["resource_version"]
    stale_delete = await client.delete("/v1/resources/appimages/hello", params={"resource_version": 1})
    assert_error(stale_delete, 409, ErrorCode.CONFLICT, "is stale")
    deleted = await client.delete("/v1/resources/appimages/hello", params={"resource_version": version})
    assert deleted.json()["meta"]["name"] == "hello"
    actions = [
        (r["spec"]["action"], r["spec"]["target_name"])
        for r in (await client.get("/v1/resources/audit")).json()["items"]
    ]
    assert actions == [("create", "hello"), ("update", "hello"), ("delete", "hello")]


async def test_node_info_and_audit_verify(client: httpx.AsyncClient) -> None:
    await client.post("/v1/apply", content=JOB % "j1")
    info = (await client.get("/v1/node")).json()
    assert info["domain"] == "alice" and info["revision"] == 2
    report = (await client.get("/v1/audit/verify")).json()
    assert report["ok"] is True and report["records"] == 1 and report["first_broken_seq"] is None


# -- tasks -----------------------------------------------------------------------------------------------


async def _task(store: MemoryStore, name: str, phase: TaskPhase, token: str = "") -> None:
    annotations = {TOKEN_ANNOTATION: token_sha256(token)} if token else {}
    task = Task(
        meta=ObjectMeta(name=name, domain="alice", annotations=annotations),
        spec=TaskSpec(
            job="j", alias="a", initiator="alice", app_image="hello", parties=[Party(domain="alice")]
        ),
    )
    task.status.phase = phase
    await store.create(task)


async def test_task_report_uses_the_task_token(client: httpx.AsyncClient, store: MemoryStore) -> None:
    await _task(store, "t1", TaskPhase.RUNNING, token="engine-secret")
    body = {"progress": 0.5, "message": "half way"}
    missing = await client.post("/v1/tasks/t1/report", json=body, headers={"Token": ""})
    assert_error(missing, 401, ErrorCode.UNAUTHENTICATED, "missing task token")
    node_token = await client.post("/v1/tasks/t1/report", json=body)  # the node token is not a task token
    assert_error(node_token, 401, 11102, "not valid for task 't1'")
    ok = await client.post("/v1/tasks/t1/report", json=body, headers={"Token": "engine-secret"})
    assert ok.json() == {"task": "t1", "progress": 0.5, "message": "half way"}
    stored = await store.get("Task", "t1")
    assert isinstance(stored, Task) and stored.status.progress == 0.5
    too_much = await client.post(
        "/v1/tasks/t1/report", json={"progress": 2}, headers={"Token": "engine-secret"}
    )
    assert_error(too_much, 400, 11100, "body field 'progress'")


async def test_task_logs(client: httpx.AsyncClient, store: MemoryStore, settings: NodeSettings) -> None:
    await _task(store, "t2", TaskPhase.SUCCEEDED)
    log_file = settings.tasks_dir / "t2" / "engine.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("one\ntwo\n")
    plain = await client.get("/v1/tasks/t2/logs")
    assert plain.text == "one\ntwo\n" and plain.headers["content-type"].startswith("text/plain")
    followed = await client.get("/v1/tasks/t2/logs", params={"follow": "true"})  # ends: task finished
    assert followed.text == "one\ntwo\n"
    assert_error(await client.get("/v1/tasks/nope/logs"), 404, ErrorCode.TASK_NOT_FOUND)
    assert_error(await client.get("/v1/tasks/Bad_Name/logs"), 400, ErrorCode.TASK_INVALID, "not a DNS label")


# -- watch over a real server ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    settings = NodeSettings(domain="alice", dir=tmp_path)
    services = Services.build(store=MemoryStore(event_retention=3), settings=settings)
    app = create_app(services, settings, TOKEN, watch_heartbeat_seconds=0.05)
    with ServerThread(app) as running:
        yield running


def _lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line:
            yield json.loads(line)


def test_watch_streams_events_and_heartbeats(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, headers={"Token": TOKEN}, timeout=10) as http:
        http.post("/v1/apply", content=JOB % "j1").raise_for_status()
        with http.stream("GET", "/v1/watch/jobs", params={"since": 0}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = _lines(response)
            first = next(lines)
            assert (first["type"], first["kind"], first["name"]) == ("ADDED", "Job", "j1")
            assert first["object"]["spec"]["initiator"] == "alice"
            assert next(lines) == {"type": "HEARTBEAT"}
            http.delete("/v1/resources/jobs/j1").raise_for_status()
            following = next(event for event in lines if event["type"] != "HEARTBEAT")
            assert (following["type"], following["name"]) == ("DELETED", "j1")


def test_watch_too_old_ends_with_an_error_line(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, headers={"Token": TOKEN}, timeout=10) as http:
        for name in ("j1", "j2", "j3"):  # 6 revisions; the store keeps 3 events
            http.post("/v1/apply", content=JOB % name).raise_for_status()
        with http.stream("GET", "/v1/watch/jobs", params={"since": 0}) as response:
            events = list(_lines(response))
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["code"] == ErrorCode.WATCH_EXPIRED and events[0]["http_status"] == 410
    assert "list again and watch from the current revision" in events[0]["message"]


def test_watch_bad_kind_is_a_plain_400(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, headers={"Token": TOKEN}, timeout=10) as http:
        assert_error(http.get("/v1/watch/gizmos"), 400, ErrorCode.UNKNOWN_KIND)
        assert_error(http.get("/v1/watch/jobs", params={"selector": "bad key"}), 400, 11100, "label selector")


def test_close_streams_ends_open_watches_and_follows(tmp_path: Path) -> None:
    from accord.api import close_streams
    from accord.api.testing import serve_node_dir

    async def seed_running_task(node: Any) -> None:
        await _task(node.services.store, "t1", TaskPhase.RUNNING)

    async def close(app: FastAPI) -> None:
        close_streams(app)

    with (
        serve_node_dir(tmp_path / "alice", token=TOKEN) as node,
        httpx.Client(base_url=node.url, headers={"Token": TOKEN}, timeout=10) as http,
    ):
        node.run(seed_running_task(node))
        log_file = node.services.settings.tasks_dir / "t1" / "engine.log"
        log_file.parent.mkdir(parents=True)
        log_file.write_text("working\n")
        with (
            http.stream("GET", "/v1/watch/tasks", params={"since": 0}) as watch,
            http.stream("GET", "/v1/tasks/t1/logs", params={"follow": "true"}) as follow,
        ):
            lines = _lines(watch)
            assert next(lines)["name"] == "t1"
            chunks = follow.iter_text()
            assert next(chunks) == "working\n"
            node.run(close(node.server.app))
            final = next(lines)
            assert final["type"] == "ERROR" and final["code"] == ErrorCode.STORE_UNAVAILABLE
            assert final["message"] == "the node is shutting down: watch again once it is back"
            assert list(lines) == []
            assert list(chunks) == []
