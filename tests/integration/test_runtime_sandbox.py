"""RunP's sandbox through the real runtime: `ProcessRuntime.start(LaunchSpec)`, as the controller calls it.

What an engine must not do, tried by a real engine against a real node directory (`init_node_dir`: the
domain key and API token) and the real local API (`serve_node_dir`): read the key, write outside its
dir, tamper with the node's records of it, or use the node's API without its task token.  What it must
still do: report progress with its token through the network bridge, and run the engines in the box
(hello; the built-in PSI with two parties whose traffic crosses an egress stand-in and whose data comes
from real DataMesh services).  Plus an OOM kill read as such, a node restart that re-adopts a running
sandboxed engine (and bridges it again), and a new run that never writes through what the last one
planted.

bubblewrap: under CI=true installed by the session fixture when missing, elsewhere a loud skip (see
test_sandbox.py).  Waits are bounded; no durations are asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from accord.api.testing import RunningNode, serve_node_dir
from accord.datamesh.wire import TaskGrant
from accord.node.bootstrap import init_node_dir, read_token
from accord.resources.appimage import AppImage, AppImageSpec, AppPort, ResourceNeeds
from accord.resources.data import DomainData
from accord.resources.job import AllocatedPort, Party, Task, TaskSpec
from accord.resources.meta import ObjectMeta
from accord.runtimes import launcher
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec
from accord.runtimes.builtin import builtin_appimages
from accord.runtimes.cgroups import CgroupSet, Limits
from accord.runtimes.contract import TOKEN_ANNOTATION, service_name, token_sha256
from accord.runtimes.process import LOG_FILE, RUN_DIR, ProcessRuntime
from accord.runtimes.sandbox import NOBODY, Isolation
from accord.settings import NodeSettings
from tests.integration.test_psi_engine import (
    PARTIES,
    HostRoutingProxy,
    Recorder,
    datamesh_node,
    make_tables,
    psi_config,
    serve,
)
from tests.integration.test_sandbox import require_bwrap, require_cgroups

DEADLINE = 60.0


@pytest.fixture(scope="module")
def isolation() -> Isolation:
    return require_bwrap()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def script_image(name: str, script: str, **spec: Any) -> AppImage:
    return AppImage(
        meta=ObjectMeta(name=name), spec=AppImageSpec(command=[sys.executable, "-c", script], **spec)
    )


def launch_spec(
    settings: NodeSettings,
    task: str,
    image: AppImage,
    *,
    uid: str = "uid-1",
    token: str = "task-token",
    ports: list[AllocatedPort] | None = None,
    input_config: str = "{}",
    parties: list[Party] | None = None,
    index: int = 0,
    node_api: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> LaunchSpec:
    return LaunchSpec(
        task=task,
        uid=uid,
        domain=settings.domain,
        app_image=image,
        input_config=input_config,
        parties=parties or [Party(domain=settings.domain)],
        self_party_index=index,
        ports=ports or [],
        node_api=node_api or settings.api_url,
        token=token,
        extra_env=extra_env or {},
    )


@contextlib.asynccontextmanager
async def runtime_for(settings: NodeSettings, iso: Isolation, **kw: Any) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(settings, isolation=iso, **kw)
    try:
        yield rt
    finally:
        for task in await rt.running_tasks():
            await rt.stop(task, grace=1.0)
        await rt.close()


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def finished(rt: ProcessRuntime, task: str, uid: str = "uid-1") -> EngineStatus:
    status = await rt.wait(task, DEADLINE, uid)
    if status.state is EngineState.RUNNING:
        await rt.stop(task, grace=1.0)
        raise AssertionError(f"engine of {task} did not finish; log:\n{rt.log_path(task).read_text()}")
    return status


async def http_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), DEADLINE)
    writer.close()
    return answer


# -- the node's secrets, the node's records and the node's API ---------------------------------------------


@pytest.fixture
def api_node(tmp_path: Path) -> Iterator[tuple[NodeSettings, RunningNode]]:
    """A real node directory (key pair, API token) served by the real local API over a MemoryStore."""
    initial = init_node_dir(domain="alice", directory=tmp_path / "alice")
    with serve_node_dir(initial.dir, token=read_token(initial), domain="alice") as node:
        yield NodeSettings(domain="alice", dir=initial.dir, api_port=node.server.port), node


def seed_task(node: RunningNode, name: str, token: str) -> None:
    task = Task(
        meta=ObjectMeta(name=name, annotations={TOKEN_ANNOTATION: token_sha256(token)}),
        spec=TaskSpec(
            job="j", alias=name, initiator="alice", app_image="probe", parties=[Party(domain="alice")]
        ),
    )
    node.run(node.services.store.create(task))


PROBE = r"""
import json, os, socket, sys, urllib.error, urllib.request
key, node_token, node_dir, sibling, unbridged = sys.argv[1:6]
api, task, token = os.environ["ACCORD_NODE_API"], os.environ["TASK_ID"], os.environ["ACCORD_TASK_TOKEN"]
report = {"uid": os.getuid(), "env": sorted(os.environ)}
def attempt(name, action):
    try:
        report[name] = ["ok", action()]
    except Exception as exc:
        report[name] = ["error", f"{type(exc).__name__}: {exc}"]
def write(path, text="planted"):
    with open(path, "w") as fh:
        fh.write(text)
attempt("read_key", lambda: open(key).read())
attempt("read_node_token", lambda: open(node_token).read())
attempt("list_node_dir", lambda: sorted(os.listdir(node_dir)))
attempt("write_node_dir", lambda: write(os.path.join(node_dir, "planted")))
attempt("write_sibling_task", lambda: write(os.path.join(sibling, "planted")))
attempt("write_usr", lambda: write("/usr/local/accord-planted"))
attempt("write_own_dir", lambda: write("result.txt", "mine"))
write("fake.log")
attempt("replace_log", lambda: os.replace("fake.log", "engine.log"))
attempt("unlink_log", lambda: os.unlink("engine.log"))
attempt("rename_control_dir", lambda: os.rename(".sandbox", "moved"))
attempt("forge_process_record", lambda: write(".sandbox/run/process.json", '{"pid": 1, "start_ticks": null}'))
attempt("unbridged_host_port", lambda: socket.create_connection(("127.0.0.1", int(unbridged)), 5).close())
attempt("outside_network", lambda: socket.create_connection(("192.0.2.1", 80), 5).close())
def call(path, token=None, body=None):
    headers = {"Content-Type": "application/json", **({"Token": token} if token is not None else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
progress = {"progress": 0.5, "message": "half way"}
report["api_no_token"] = call(f"/v1/tasks/{task}/report", None, progress)
report["api_wrong_token"] = call(f"/v1/tasks/{task}/report", "guessed", progress)
report["api_other_task"] = call("/v1/tasks/victim/report", token, progress)
report["api_admin_route"] = call("/v1/node", token)
report["api_with_token"] = call(f"/v1/tasks/{task}/report", token, progress)
write("report.json", json.dumps(report))
print("probe done", flush=True)
"""


async def test_engine_cannot_read_the_key_write_outside_or_use_the_api_without_its_token(
    api_node: tuple[NodeSettings, RunningNode], isolation: Isolation
) -> None:
    settings, node = api_node
    seed_task(node, "probe", "probe-token")
    seed_task(node, "victim", "victim-token")
    sibling = settings.tasks_dir / "other-task"
    sibling.mkdir(parents=True)
    hits: list[bytes] = []

    async def unbridged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(unbridged, "127.0.0.1", 0)
    args = [str(settings.key_path), str(settings.token_path), str(settings.dir), str(sibling)]
    args.append(str(server.sockets[0].getsockname()[1]))
    image = AppImage(
        meta=ObjectMeta(name="probe"),
        spec=AppImageSpec(command=[sys.executable, "-c", PROBE], args=args, env={"LD_PRELOAD": ""}),
    )
    try:
        async with runtime_for(settings, isolation) as rt:
            await rt.start(launch_spec(settings, "probe", image, token="probe-token"))
            status = await finished(rt, "probe")
    finally:
        server.close()
        await server.wait_closed()
    work = settings.tasks_dir / "probe"
    log = work / LOG_FILE
    assert status.succeeded, status.describe() + "\n" + log.read_text()
    report = json.loads((work / "report.json").read_text())

    def failed(name: str) -> bool:
        return cast(bool, report[name][0] == "error")

    # The node's secrets are not there at all; nothing outside the task dir can be written.
    assert report["uid"] == (NOBODY if isolation.as_root else os.getuid())
    assert failed("read_key") and "No such file" in report["read_key"][1]
    assert failed("read_node_token")
    assert report["list_node_dir"][0] == "error" or "domain.key" not in report["list_node_dir"][1]
    assert failed("write_node_dir") and not (settings.dir / "planted").exists()
    assert failed("write_sibling_task") and list(sibling.iterdir()) == []
    assert failed("write_usr") and not Path("/usr/local/accord-planted").exists()
    assert report["write_own_dir"] == ["ok", None] and (work / "result.txt").read_text() == "mine"
    # The node's records of the engine and its log stay the node's.
    for attack in ("replace_log", "unlink_log", "rename_control_dir", "forge_process_record"):
        assert failed(attack), (attack, report[attack])
    info = os.lstat(log)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and "probe done" in log.read_text()
    marker = json.loads((work / RUN_DIR / launcher.PROCESS_FILE).read_text())
    assert marker["pid"] == status.pid and marker["start_ticks"] is not None
    # No network but the bridged node services; the API only with the engine's own token.
    assert failed("unbridged_host_port") and hits == []
    assert failed("outside_network")
    assert report["api_no_token"] == 401 and report["api_wrong_token"] == 401
    assert report["api_other_task"] == 401 and report["api_admin_route"] == 401
    assert report["api_with_token"] == 200
    probe = cast(Task, node.run(node.services.store.get("Task", "probe")))
    assert probe.status.progress == 0.5 and probe.status.message == "half way"
    assert not {"ACCORD_API_TOKEN", "ACCORD_NODE_TOKEN"} & set(report["env"])
    assert not (work / ".sandbox" / "env.json").exists()  # the engine's env (its token) is gone


# -- the engines in the box -------------------------------------------------------------------------------


async def test_hello_runs_to_success_sandboxed(tmp_path: Path, isolation: Isolation) -> None:
    settings = NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=free_port())
    hello = next(image for image in builtin_appimages(sys.executable) if image.meta.name == "hello")
    async with runtime_for(settings, isolation) as rt:
        assert rt.isolation().startswith(f"bwrap {isolation.bwrap_version}")
        await rt.start(launch_spec(settings, "hello-1", hello, input_config='{"numbers": [1, 2, 3]}'))
        status = await finished(rt, "hello-1")
    assert status.succeeded and status.describe() == "engine exited with code 0", status
    result = settings.tasks_dir / "hello-1" / "result.json"
    assert json.loads(result.read_text())["sum"] == 6
    assert result.stat().st_uid == (NOBODY if isolation.as_root else os.getuid())
    assert "hello: task hello-1 in domain alice starts" in rt.log_path("hello-1").read_text()


PSI_TASK = "job-1-psi"


async def test_builtin_psi_runs_sandboxed_between_two_parties(tmp_path: Path, isolation: Isolation) -> None:
    """Each party in its own sandbox: peer traffic leaves through the egress bridge to an egress stand-in
    (routing by Host like the gateway) and enters the peer's sandbox through its inbound bridge; data
    comes from and goes to each party's real DataMesh; progress goes to the node API with the token."""
    paths, expected = make_tables(tmp_path, rows=400, seed=31)
    image = AppImage(
        meta=ObjectMeta(name="psi"),
        spec=AppImageSpec(command=[sys.executable, "-m", "accord.engines.psi"], ports=[AppPort(name="psi")]),
    )
    config = psi_config(paths, workers=2)
    config["inputs"] = {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES}
    parties = [Party(domain=p) for p in PARTIES]
    recorder = Recorder()
    async with (
        datamesh_node(tmp_path, "alice", {"alice-table": paths["alice"]}) as alice,
        datamesh_node(tmp_path, "bob", {"bob-table": paths["bob"]}) as bob,
    ):
        nodes = {"alice": alice, "bob": bob}
        async with contextlib.AsyncExitStack() as stack:
            runtimes = {}
            for party in PARTIES:
                settings = NodeSettings(domain=party, dir=tmp_path / f"node-{party}", api_port=free_port())
                env = {"ACCORD_DATAMESH": nodes[party].service.location}
                runtimes[party] = await stack.enter_async_context(
                    runtime_for(settings, isolation, node_env=env)
                )
            ports = {p: await runtimes[p].allocate_ports(PSI_TASK, image.spec.ports) for p in PARTIES}
            proxy = HostRoutingProxy(
                {f"{service_name(PSI_TASK, 'psi')}.{p}.svc": ports[p][0].port for p in PARTIES}
            )
            stack.enter_context(serve(proxy))
            stack.enter_context(serve(recorder))
            for index, party in enumerate(PARTIES):
                nodes[party].tokens[f"tok-{party}"] = TaskGrant(
                    task=PSI_TASK, job="job-1", domain=party, inputs={f"{party}-table"}, outputs_allowed=True
                )
                spec = launch_spec(
                    runtimes[party]._settings,
                    PSI_TASK,
                    image,
                    token=f"tok-{party}",
                    ports=ports[party],
                    input_config=json.dumps(config),
                    parties=parties,
                    index=index,
                    node_api=f"http://127.0.0.1:{recorder.server_address[1]}",
                    extra_env={"ACCORD_EGRESS": f"http://127.0.0.1:{proxy.server_address[1]}"},
                )
                await runtimes[party].start(spec)
            for party in PARTIES:
                status = await finished(runtimes[party], PSI_TASK)
                assert status.succeeded, status.describe() + runtimes[party].log_path(PSI_TASK).read_text()
        assert proxy.hosts == {f"{service_name(PSI_TASK, 'psi')}.{p}.svc" for p in PARTIES}
        for party, node in nodes.items():
            data = await node.store.get("DomainData", f"{PSI_TASK}-output")
            assert isinstance(data, DomainData) and data.spec.lineage.inputs == [f"{party}-table"]
        summary = json.loads((tmp_path / "node-alice" / "tasks" / PSI_TASK / "result.json").read_text())
        assert summary["intersection_keys"] == len(expected) and summary["workers"] == 2
    reports = {(path, token) for path, token, _ in recorder.reports}
    assert reports == {(f"/v1/tasks/{PSI_TASK}/report", f"tok-{p}") for p in PARTIES}


# -- limits, restarts, reruns --------------------------------------------------------------------------------

MEMORY_HOG = "hog = b'x' * (400 << 20); print('allocated', len(hog))"


async def test_an_oom_kill_is_a_crash_naming_the_memory_limit(tmp_path: Path, isolation: Isolation) -> None:
    require_cgroups(isolation)
    settings = NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=free_port())
    image = script_image("hog", MEMORY_HOG, resources=ResourceNeeds(memory="64Mi"))
    async with runtime_for(settings, isolation) as rt:
        await rt.start(launch_spec(settings, "hog", image))
        status = await finished(rt, "hog")
    assert status.crashed and status.oom_killed and status.memory_limit_bytes == 64 << 20
    assert status.describe().startswith("engine killed: memory limit 64 MiB exceeded")
    assert "accord sandbox: engine killed: memory limit 64 MiB exceeded" in rt.log_path("hog").read_text()


ADOPTEE = r"""
import http.server, json, os, sys, threading, time, urllib.request
port = json.loads(os.environ["ALLOCATED_PORTS"])["ports"][0]["port"]
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"engine here"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Hello)
threading.Thread(target=server.serve_forever, daemon=True).start()
open("serving", "w").close()
while not os.path.exists("finish"):
    time.sleep(0.05)
urllib.request.urlopen(os.environ["ACCORD_NODE_API"] + "/after-restart", timeout=10).read()
server.shutdown()
sys.exit(5)
"""


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


async def test_a_restarted_node_adopts_a_sandboxed_engine_and_bridges_it_again(
    tmp_path: Path, isolation: Isolation
) -> None:
    api_hits: list[tuple[str, str]] = []

    def api(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = (await reader.readuntil(b"\r\n\r\n")).decode()
            api_hits.append((name, request.split()[1]))
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        return handle

    # The restarted node's API listens on another port than the one the engine was told.
    api_server = await asyncio.start_server(api("old"), "127.0.0.1", 0)
    new_api = await asyncio.start_server(api("new"), "127.0.0.1", 0)
    new_api_port = int(new_api.sockets[0].getsockname()[1])
    settings = NodeSettings(
        domain="alice", dir=tmp_path / "alice", api_port=api_server.sockets[0].getsockname()[1]
    )
    image = script_image("adoptee", ADOPTEE, ports=[AppPort(name="web")], env={"LD_PRELOAD": ""})
    first = ProcessRuntime(settings, isolation=isolation)
    try:
        (port,) = await first.allocate_ports("adoptee", image.spec.ports)
        with pytest.raises(OSError), socket.socket() as thief:  # held for the engine until its bridge listens
            thief.bind(("127.0.0.1", port.port))
        started = await first.start(
            launch_spec(settings, "adoptee", image, ports=[port], token="adoptee-token")
        )
        work = first.work_dir("adoptee")
        await until(lambda: (work / "serving").exists(), "the engine to serve")
        assert b"engine here" in await http_get(port.port)
        # Neither the launcher nor the supervisor (both root, outside the sandbox) got the engine's env.
        assert started.pid is not None
        supervisor = int(Path(f"/proc/{started.pid}/task/{started.pid}/children").read_text().split()[0])
        for pid in (started.pid, supervisor):
            assert not {"ACCORD_TASK_TOKEN", "LD_PRELOAD", "TASK_INPUT_CONFIG"} & set(environ_of(pid))

        await first.close()  # the node dies: its bridge goes with it, the engine does not
        with pytest.raises(OSError):
            await http_get(port.port)
        second = ProcessRuntime(  # the restarted node
            settings, isolation=isolation, node_services=lambda: {"api": ("127.0.0.1", new_api_port)}
        )
        try:
            adopted = await second.poll("adoptee", "uid-1")
            assert adopted.state is EngineState.RUNNING and adopted.pid == started.pid
            assert b"engine here" in await http_get(port.port)
            (work / "finish").touch()
            final = await finished(second, "adoptee")
        finally:
            for task in await second.running_tasks():
                await second.stop(task, grace=1.0)
            await second.close()
    finally:
        for task in await first.running_tasks():
            await first.stop(task, grace=1.0)
        for server in (api_server, new_api):
            server.close()
            await server.wait_closed()
    assert final.exit_code == 5 and final.describe().startswith("engine exited with code 5"), final
    assert api_hits == [("new", "/after-restart")]  # the new node process's bridge led it to the new API
    with pytest.raises(OSError):  # the engine ended: its bridge is closed
        await http_get(port.port)


PLANTER = r"""
import os, sys
os.symlink(sys.argv[1], "etc")  # a directory link: a root write to etc/... would land outside
os.symlink(sys.argv[1], "kuscia")
"""


async def test_a_new_run_never_writes_through_what_the_last_one_planted(
    tmp_path: Path, isolation: Isolation
) -> None:
    settings = NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=free_port())
    outside = tmp_path / "outside"
    outside.mkdir()
    planter = AppImage(
        meta=ObjectMeta(name="planter"),
        spec=AppImageSpec(command=[sys.executable, "-c", PLANTER], args=[str(outside)]),
    )
    rendering = script_image(
        "renders",
        "print(open('etc/task.json').read())",
        config_templates={"conf": '{"task": "{{.TASK_ID}}"}'},
        config_mounts={"conf": "etc/task.json"},
    )
    async with runtime_for(settings, isolation) as rt:
        await rt.start(launch_spec(settings, "rerun", planter, uid="run-1"))
        assert (await finished(rt, "rerun", "run-1")).succeeded
        work = rt.work_dir("rerun")
        assert (work / "etc").is_symlink()
        await rt.start(launch_spec(settings, "rerun", rendering, uid="run-2"))
        status = await finished(rt, "rerun", "run-2")
    assert status.succeeded, status.describe()
    assert list(outside.iterdir()) == []
    assert not (work / "etc").is_symlink() and json.loads((work / "etc" / "task.json").read_text()) == {
        "task": "rerun"
    }
    assert '{"task": "rerun"}' in rt.log_path("rerun").read_text()


async def test_groups_a_killed_node_left_unrecorded_are_swept_at_the_next_start(
    tmp_path: Path, isolation: Isolation
) -> None:
    require_cgroups(isolation)
    settings = NodeSettings(domain="alice", dir=tmp_path / "alice", api_port=free_port())
    # What a node SIGKILLed after creating a task's groups, before recording them, leaves behind.
    orphan = CgroupSet.create(isolation.cgroups, "alice.sweep-0123abcd", Limits(memory_bytes=64 << 20))
    other = CgroupSet.create(isolation.cgroups, "bob.sweep-0123abcd", Limits())  # another node's: kept
    try:
        async with runtime_for(settings, isolation) as rt:
            await rt.start(launch_spec(settings, "sweep", script_image("quick", "print('ok')")))
            assert (await finished(rt, "sweep")).succeeded
        assert not orphan.exists() and other.exists()
    finally:
        orphan.remove()
        other.remove()
