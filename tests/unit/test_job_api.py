"""The job routes on one node's real API (uvicorn in a thread, MemoryStore, no controllers running).

Native `/v1/jobs/...` and KusciaAPI `/api/v1/job/...` shapes, codes and the watch stream; the routes'
cross-domain behaviour (forwarding a command to the initiator) is covered by the multi-node tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accord.api.app import create_app
from accord.api.testing import ServerThread
from accord.services import Services
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

TOKEN = "job-api-token"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    settings = NodeSettings(domain="alice", dir=tmp_path)
    app = create_app(
        Services.build(store=MemoryStore(), settings=settings), settings, TOKEN, watch_heartbeat_seconds=0.2
    )
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, headers={"Token": TOKEN}, timeout=10) as c,
    ):
        yield c


def kuscia(api: httpx.Client, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/api/v1/job/{route}", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


CREATE = {
    "job_id": "k1",
    "max_parallelism": 2,
    "custom_fields": {"team": "risk"},
    "tasks": [
        {
            "app_image": "hello",
            "alias": "a",
            "task_input_config": '{"numbers": [1]}',
            "priority": 5,
            "schedule_config": {"task_timeout_seconds": 60},
            "parties": [{"domain_id": "alice", "role": "host"}],
        },
        {"app_image": "hello", "alias": "b", "dependencies": ["a"], "parties": [{"domain_id": "alice"}]},
    ],
}


def test_kuscia_create_query_and_commands(api: httpx.Client) -> None:
    assert kuscia(api, "create", CREATE) == {
        "status": {"code": 0, "message": "success", "details": []},
        "data": {"job_id": "k1"},
    }
    native = api.get("/v1/resources/jobs/k1").json()
    assert native["spec"]["schedule_mode"] == "BestEffort" and native["spec"]["initiator"] == "alice"
    assert native["spec"]["tasks"][0]["schedule_config"]["task_timeout_seconds"] == 60

    data = kuscia(api, "query", {"job_id": "k1"})["data"]
    assert data["job_id"] == "k1" and data["custom_fields"] == {"team": "risk"}
    assert data["tasks"][1] == {
        "app_image": "hello",
        "alias": "b",
        "task_id": "",
        "dependencies": ["a"],
        "task_input_config": "",
        "priority": 0,
        "tolerable": False,
        "parties": [{"domain_id": "alice", "role": ""}],
    }
    assert data["status"]["state"] == "Pending"
    assert [t["alias"] for t in data["status"]["tasks"]] == ["a", "b"]
    batch = kuscia(api, "status/batchQuery", {"job_ids": ["k1"]})["data"]["jobs"]
    assert batch == [{"job_id": "k1", "status": data["status"]}]

    assert kuscia(api, "query", {"job_id": "nope"})["status"]["code"] == 11202
    assert kuscia(api, "suspend", {"job_id": "k1"})["status"]["code"] == 11210
    assert kuscia(api, "restart", {"job_id": "k1"})["status"]["code"] == 11211
    approve = kuscia(api, "approve", {"job_id": "k1", "result": "APPROVE_RESULT_ACCEPT"})
    assert approve["status"]["code"] == 11207 and "only participants approve" in approve["status"]["message"]
    bad = kuscia(api, "approve", {"job_id": "k1", "result": "MAYBE"})
    assert bad["status"]["code"] == 11100
    assert kuscia(api, "cancel", {"job_id": "k1", "reason": "wrong data"})["status"]["code"] == 0
    cancelled = kuscia(api, "query", {"job_id": "k1"})["data"]["status"]
    assert (
        cancelled["state"] == "Cancelled" and cancelled["stage_status_list"][0]["state"] == "JobCancelStage"
    )

    cycle = {**CREATE, "job_id": "k2", "tasks": [{**CREATE["tasks"][1], "alias": "b", "dependencies": ["b"]}]}  # type: ignore[dict-item]
    refused = kuscia(api, "create", cycle)
    assert refused["status"]["code"] == 11204 and refused["data"] is None
    assert api.post("/api/v1/job/query", json={"job_id": "k1"}, headers={"Token": "wrong"}).status_code == 401


def test_native_job_routes(api: httpx.Client) -> None:
    job = {
        "kind": "Job",
        "meta": {"name": "n1"},
        "spec": {
            "initiator": "alice",
            "tasks": [{"alias": "a", "app_image": "hello", "parties": [{"domain": "alice"}]}],
        },
    }
    created = api.post("/v1/jobs", json=job)
    assert created.status_code == 201 and created.json()["meta"]["name"] == "n1"
    foreign = api.post(
        "/v1/jobs", json={**job, "meta": {"name": "n2"}, "spec": {**job["spec"], "initiator": "bob"}}
    )  # type: ignore[dict-item]
    assert foreign.status_code == 400 and "submit it at bob's node" in foreign.json()["message"]
    unknown = {**job, "meta": {"name": "n3"}}
    unknown["spec"] = {
        **job["spec"],
        "tasks": [{"alias": "a", "app_image": "hello", "parties": [{"domain": "zed"}]}],
    }  # type: ignore[dict-item]
    refused = api.post("/v1/jobs", json=unknown)
    assert refused.status_code == 400 and refused.json()["code"] == 11206
    approve = api.post("/v1/jobs/n1/approve", json={"reason": "sure"})
    assert approve.status_code == 400 and approve.json()["code"] == 11207
    stop = api.post("/v1/jobs/n1/stop", json={"reason": "typo"})
    assert stop.status_code == 200
    assert stop.json() == {
        "job": "n1",
        "phase": "Failed",
        "stage": {"stage": "Stop", "version": 1, "trigger": "alice"},
        "message": "stopped by alice: typo",
        "initiator": "alice",
    }
    suspend = api.post("/v1/jobs/n1/suspend")
    assert suspend.status_code == 409 and suspend.json()["code"] == 11210
    deleted = api.delete("/v1/jobs/n1")
    assert deleted.status_code == 200 and deleted.json()["stage"]["version"] == 2
    assert api.get("/v1/resources/jobs/n1").json()["meta"]["annotations"]["accord/deleted-by"] == "alice"


def test_kuscia_watch_streams_job_changes_until_its_timeout(api: httpx.Client) -> None:
    lines: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        with api.stream("POST", "/api/v1/job/watch", json={"timeout_seconds": 3}) as response:
            ready.set()
            for line in response.iter_lines():
                if line.strip():
                    lines.append(json.loads(line))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert ready.wait(10)
    kuscia(api, "create", {**CREATE, "job_id": "w1"})
    kuscia(api, "cancel", {"job_id": "w1"})
    watcher.join(15)
    assert not watcher.is_alive()  # the stream ended by itself after timeout_seconds
    changes = [
        (e["type"], e["object"]["job_id"], e["object"]["status"]["state"])
        for e in lines
        if e["type"] != "HEARTBEAT"
    ]
    assert changes == [("ADDED", "w1", "Pending"), ("MODIFIED", "w1", "Cancelled")]
