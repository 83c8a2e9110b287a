"""RunP (ProcessRuntime) with real child processes, and the pure helpers it uses (engine contract, limits,
the node-side task-dir file rules).

Every runtime test runs twice: with the isolation this machine allows (bubblewrap + cgroups here) and
with bubblewrap switched off (plain processes, cgroups/prlimit only), so both paths of RunP keep the same
behaviour.  The sandbox's own promises are tested in tests/integration/test_runtime_sandbox.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from accord.errors import ErrorCode, InvalidArgument
from accord.resources.appimage import AppImage, AppImageSpec, AppPort, ResourceNeeds
from accord.resources.job import AllocatedPort, Party
from accord.resources.meta import ObjectMeta
from accord.runtimes import launcher
from accord.runtimes.base import EngineState, EngineStatus, LaunchSpec, Runtime
from accord.runtimes.builtin import builtin_appimages
from accord.runtimes.contract import (
    allocated_ports_document,
    cluster_define,
    party_endpoints,
    port_env_name,
    render_config_files,
    render_template,
    safe_relative_path,
    service_name,
    token_sha256,
)
from accord.runtimes.limits import DEFAULT_LIMITS, EngineLimits, limits_for, parse_cpu, parse_memory
from accord.runtimes.process import RUN_DIR, ProcessRuntime, log_tail
from accord.runtimes.sandbox import detect_isolation
from accord.runtimes.taskfiles import bridge_env, open_log, read_json, reset_task_dir, safe_read_only_paths
from accord.settings import NodeSettings

LIMIT = 20.0

ENV_DUMP = "import json, os; json.dump(dict(os.environ), open('env.json', 'w')); print('dumped env')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app(name: str, script: str, **spec: Any) -> AppImage:
    return AppImage(
        meta=ObjectMeta(name=name),
        spec=AppImageSpec(command=[sys.executable, "-c", script], **spec),
    )


def launch(
    task: str, image: AppImage, *, uid: str = "uid-1", ports: list[AllocatedPort] | None = None
) -> LaunchSpec:
    return LaunchSpec(
        task=task,
        uid=uid,
        domain="alice",
        app_image=image,
        input_config='{"numbers": [1, 2]}',
        parties=[Party(domain="alice", role="host"), Party(domain="bob", role="guest")],
        self_party_index=0,
        ports=ports or [],
        node_api="http://127.0.0.1:1",
        token="secret-token",
    )


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(domain="alice", dir=tmp_path, api_port=free_port())


@pytest.fixture(params=["detected", "no-bwrap"])
async def runtime(request: pytest.FixtureRequest, settings: NodeSettings) -> AsyncIterator[ProcessRuntime]:
    iso = detect_isolation()
    if request.param == "no-bwrap":
        iso = dataclasses.replace(iso, bwrap=None, bwrap_problem="bwrap switched off for this test")
    rt = ProcessRuntime(settings, isolation=iso)
    try:
        yield rt
    finally:
        for task in await rt.running_tasks():
            await rt.stop(task, grace=0.5)
        await rt.close()


# -- the pure contract ------------------------------------------------------------------------------


def test_port_env_and_service_names_follow_kuscia() -> None:
    assert port_env_name("spu-port") == "KUSCIA_PORT_SPU_PORT_NUMBER"
    assert service_name("job-psi", "spu") == "job-psi-0-spu"
    assert service_name("job-psi", "spu", role="host") == "job-psi-host-0-spu"
    assert service_name("1job", "spu").startswith("svc-")
    long = service_name("t" * 60, "port")
    assert len(long) <= 63 and long.startswith("svc-")
    assert long == service_name("t" * 60, "port")  # deterministic


def test_cluster_define_publishes_ports_by_scope() -> None:
    parties = [Party(domain="alice"), Party(domain="bob", role="guest")]
    ports = [
        AppPort(name="spu", protocol="GRPC"),
        AppPort(name="ctl", scope="Domain"),
        AppPort(name="dbg", scope="Local"),
    ]
    allocated = [AllocatedPort(name="spu", port=2000), AllocatedPort(name="ctl", port=2001)]
    doc = cluster_define("job-psi", parties, 0, ports, allocated)
    assert doc["selfPartyIdx"] == 0 and doc["selfEndpointIdx"] == 0
    alice, bob = doc["parties"]
    assert alice == {
        "name": "alice",
        "role": "",
        "services": [
            {"portName": "spu", "endpoints": ["job-psi-0-spu.alice.svc"]},
            {"portName": "ctl", "endpoints": ["job-psi-0-ctl.alice.svc:2001"]},
        ],
    }
    assert bob["services"] == [{"portName": "spu", "endpoints": ["job-psi-guest-0-spu.bob.svc"]}]
    assert party_endpoints("job-psi", parties[1], ports) == {"spu": "job-psi-guest-0-spu.bob.svc"}
    with pytest.raises(InvalidArgument, match="out of range"):
        cluster_define("job-psi", parties, 2, ports)


def test_allocated_ports_document() -> None:
    doc = allocated_ports_document([AllocatedPort(name="spu", port=26409, protocol="GRPC")])
    assert doc == {"ports": [{"name": "spu", "port": 26409, "scope": "Cluster", "protocol": "GRPC"}]}


def test_render_template_substitutes_and_escapes_inside_json_strings() -> None:
    variables = {"TASK_ID": "t1", "TASK_CLUSTER_DEFINE": '{"parties":[{"name":"alice"}]}'}
    text = '{"task_id":"{{.TASK_ID}}","cluster":"{{ .TASK_CLUSTER_DEFINE }}"} id={{.TASK_ID}}'
    rendered = render_template("conf", text, variables)
    doc = json.loads(rendered.split(" id=")[0])
    assert doc == {"task_id": "t1", "cluster": variables["TASK_CLUSTER_DEFINE"]}
    assert rendered.endswith(" id=t1")


def test_render_template_refuses_unknown_names_and_other_syntax() -> None:
    with pytest.raises(InvalidArgument) as err:
        render_template("conf", "{{.NOPE}}", {"TASK_ID": "t"})
    assert "'conf'" in err.value.message and "NOPE" in err.value.message and "TASK_ID" in err.value.message
    assert err.value.code == ErrorCode.APPIMAGE_INVALID
    with pytest.raises(InvalidArgument, match="unsupported expression"):
        render_template("conf", "{{{.X.a.b}}}", {"X": "{}"})
    with pytest.raises(InvalidArgument, match="unsupported expression"):
        render_template("conf", "{{ .X | json }}", {"X": "1"})


@pytest.mark.parametrize("bad", ["/etc/passwd", "../escape", "a/../../b", "", "~/x"])
def test_config_paths_must_stay_inside_the_task_dir(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="relative path inside the task directory"):
        safe_relative_path(tmp_path, bad, "config mount")
    assert (
        safe_relative_path(tmp_path, "kuscia/task.conf", "config mount") == tmp_path / "kuscia" / "task.conf"
    )


def test_config_mount_must_name_a_template(tmp_path: Path) -> None:
    image = app("x", "pass", config_mounts={"missing": "conf.json"})
    with pytest.raises(InvalidArgument, match="'missing'"):
        render_config_files(image, {}, tmp_path)


def test_builtin_hello_appimage_runs_the_given_python() -> None:
    hello = next(image for image in builtin_appimages("/opt/py/bin/python3") if image.meta.name == "hello")
    assert hello.spec.command == ["/opt/py/bin/python3", "-m", "accord.engines.hello"]
    assert hello.meta.labels["accord/builtin"] == "true"


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("one\n\ntwo\nthree\nfour\n")
    assert log_tail(log) == "two | three | four"
    assert log_tail(tmp_path / "absent.log") == ""


# -- ProcessRuntime ---------------------------------------------------------------------------------


async def test_runtime_satisfies_the_protocol(runtime: ProcessRuntime) -> None:
    assert isinstance(runtime, Runtime)
    text = runtime.isolation()
    iso = detect_isolation()
    if runtime._isolation().sandboxed:
        assert text.startswith(f"bwrap {iso.bwrap_version} (read-only root, node dir hidden")
    else:
        assert text.startswith("no sandbox (")
    assert iso.cgroups.describe() in text
    assert text.endswith("engine limits by default: memory 2 GiB, 2 CPUs, 1024 processes, 4096 open files")
    if iso.as_root and not runtime._isolation().sandboxed:  # which uid engines get is always said
        assert "engines run as ROOT: uid 65534 cannot reach" in text or "engines run as uid 65534" in text


async def test_engine_gets_the_contract_env_and_nothing_of_the_node(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCORD_API_TOKEN", "node-secret")
    monkeypatch.setenv("SOME_NODE_VARIABLE", "leak")
    ports = await runtime.allocate_ports("t-env", [AppPort(name="spu-port", protocol="GRPC")])
    image = app(
        "dump",
        ENV_DUMP,
        env={"APP_SETTING": "on", "TASK_ID": "spoofed"},
        ports=[AppPort(name="spu-port", protocol="GRPC")],
        config_templates={"task.conf": '{"task_id":"{{.TASK_ID}}","cluster":"{{.TASK_CLUSTER_DEFINE}}"}'},
        config_mounts={"task.conf": "kuscia/task-config.conf"},
    )
    started = await runtime.start(launch("t-env", image, ports=ports))
    assert started.state in (EngineState.RUNNING, EngineState.EXITED)
    status = await runtime.wait("t-env", LIMIT)
    assert status.state is EngineState.EXITED and status.exit_code == 0, status
    work = runtime.work_dir("t-env")
    env = json.loads((work / "env.json").read_text())
    assert env["TASK_ID"] == "t-env"  # the contract wins over the AppImage env
    assert env["APP_SETTING"] == "on"
    assert env["KUSCIA_DOMAIN_ID"] == "alice"
    assert env["TASK_INPUT_CONFIG"] == '{"numbers": [1, 2]}'
    assert env["ACCORD_NODE_API"] == "http://127.0.0.1:1"
    assert env["ACCORD_TASK_TOKEN"] == "secret-token"
    assert env["HOME"] == str(work) and env["ACCORD_WORK_DIR"] == str(work)
    assert env["KUSCIA_PORT_SPU_PORT_NUMBER"] == str(ports[0].port)
    assert json.loads(env["ALLOCATED_PORTS"])["ports"][0]["name"] == "spu-port"
    cluster = json.loads(env["TASK_CLUSTER_DEFINE"])
    assert [p["name"] for p in cluster["parties"]] == ["alice", "bob"] and cluster["selfPartyIdx"] == 0
    assert "ACCORD_API_TOKEN" not in env and "SOME_NODE_VARIABLE" not in env
    assert "PATH" in env
    conf = json.loads((work / "kuscia" / "task-config.conf").read_text())
    assert conf["task_id"] == "t-env" and json.loads(conf["cluster"]) == cluster
    assert "dumped env" in runtime.log_path("t-env").read_text()


async def test_nonzero_exit_is_reported_with_the_log_tail(runtime: ProcessRuntime) -> None:
    image = app("fail", "import sys; print('cannot read input', file=sys.stderr); sys.exit(3)")
    await runtime.start(launch("t-fail", image))
    status = await runtime.wait("t-fail", LIMIT)
    assert status.state is EngineState.EXITED and status.exit_code == 3 and not status.crashed
    assert not status.succeeded
    assert status.describe().startswith("engine exited with code 3")
    assert "cannot read input" in status.describe()


async def test_killed_engine_is_reported_as_crashed(runtime: ProcessRuntime) -> None:
    image = app("crash", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    await runtime.start(launch("t-crash", image))
    status = await runtime.wait("t-crash", LIMIT)
    assert status.crashed and status.signal == signal.SIGKILL
    assert status.describe().startswith("engine crashed (killed by signal SIGKILL)")


async def test_missing_program_exits_127_with_a_reason(runtime: ProcessRuntime, tmp_path: Path) -> None:
    image = AppImage(
        meta=ObjectMeta(name="ghost"), spec=AppImageSpec(command=[str(tmp_path / "no-such-engine")])
    )
    await runtime.start(launch("t-ghost", image))
    status = await runtime.wait("t-ghost", LIMIT)
    assert status.exit_code == 127
    assert "cannot start" in status.describe() and "no-such-engine" in status.describe()


async def test_appimage_without_command_and_bad_templates_are_refused(runtime: ProcessRuntime) -> None:
    empty = AppImage(meta=ObjectMeta(name="kuscia-only"), spec=AppImageSpec())
    with pytest.raises(InvalidArgument, match="'kuscia-only' has no command"):
        await runtime.start(launch("t-empty", empty))
    bad = app("bad", "pass", config_templates={"c": "{{.UNKNOWN}}"})
    with pytest.raises(InvalidArgument, match="UNKNOWN"):
        await runtime.start(launch("t-bad", bad))
    assert (await runtime.poll("t-bad")).state is EngineState.NOT_STARTED


async def test_start_is_idempotent_and_stop_terminates_the_group(runtime: ProcessRuntime) -> None:
    image = app("sleeper", "import time; time.sleep(600)")
    first = await runtime.start(launch("t-sleep", image))
    second = await runtime.start(launch("t-sleep", image))
    assert first.state is EngineState.RUNNING and second.pid == first.pid
    assert first.pid is not None and os.getsid(first.pid) == first.pid  # its own session
    assert await runtime.running_tasks() == ["t-sleep"]
    status = await runtime.stop("t-sleep", grace=LIMIT)
    assert status.state is EngineState.EXITED and status.signal == signal.SIGTERM
    assert await runtime.running_tasks() == []
    assert (await runtime.stop("t-sleep")).state is EngineState.EXITED  # stopping again is harmless


async def test_stop_escalates_to_sigkill(runtime: ProcessRuntime) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"
    )
    image = app("stubborn", script)
    await runtime.start(launch("t-stubborn", image))
    log = runtime.log_path("t-stubborn")
    for _ in range(400):  # wait until the handler is installed (bounded)
        if "ready" in log.read_text():
            break
        await runtime.wait("t-stubborn", 0.05)
    status = await runtime.stop("t-stubborn", grace=0.2)
    assert status.state is EngineState.EXITED and status.signal == signal.SIGKILL
    assert "stopped by the node" in status.describe()


async def test_a_new_runtime_adopts_a_running_engine(settings: NodeSettings, runtime: ProcessRuntime) -> None:
    image = app("slow", "import time, sys; time.sleep(0.5); sys.exit(4)")
    started = await runtime.start(launch("t-adopt", image))
    reborn = ProcessRuntime(settings)  # what a restarted node builds
    polled = await reborn.poll("t-adopt", "uid-1")
    assert polled.state in (EngineState.RUNNING, EngineState.EXITED)
    assert polled.pid == started.pid
    final = await reborn.wait("t-adopt", LIMIT, "uid-1")
    assert final.state is EngineState.EXITED and final.exit_code == 4


async def test_exit_listeners_hear_of_an_ending_engine_without_polling(runtime: ProcessRuntime) -> None:
    ended: asyncio.Queue[str] = asyncio.Queue()
    runtime.on_exit(ended.put_nowait)
    await runtime.start(launch("t-notice", app("brief", "import time; time.sleep(0.3)")))
    assert await asyncio.wait_for(ended.get(), LIMIT) == "t-notice"
    status = await runtime.poll("t-notice", "uid-1")  # the notice is a wake-up; poll has the record
    assert status.state is EngineState.EXITED and status.exit_code == 0
    assert ended.empty()


async def test_an_adopted_engine_is_watched_too(settings: NodeSettings, runtime: ProcessRuntime) -> None:
    await runtime.start(launch("t-adopted", app("slow", "import time; time.sleep(1.0)")))
    reborn = ProcessRuntime(settings)  # a restarted node: the launcher is not its child
    ended: asyncio.Queue[str] = asyncio.Queue()
    reborn.on_exit(ended.put_nowait)
    try:
        assert (await reborn.poll("t-adopted", "uid-1")).state is EngineState.RUNNING
        assert await asyncio.wait_for(ended.get(), LIMIT) == "t-adopted"
        assert (await reborn.poll("t-adopted", "uid-1")).state is EngineState.EXITED
    finally:
        await reborn.close()


async def test_uid_mismatch_means_not_started(runtime: ProcessRuntime) -> None:
    await runtime.start(launch("t-uid", app("quick", "pass"), uid="first-run"))
    await runtime.wait("t-uid", LIMIT)
    assert (await runtime.poll("t-uid", "first-run")).state is EngineState.EXITED
    assert (await runtime.poll("t-uid", "second-run")).state is EngineState.NOT_STARTED
    again = await runtime.start(launch("t-uid", app("quick", "print('second')"), uid="second-run"))
    assert again.state in (EngineState.RUNNING, EngineState.EXITED)
    assert (await runtime.wait("t-uid", LIMIT, "second-run")).exit_code == 0


async def test_reused_pid_is_not_mistaken_for_the_engine(runtime: ProcessRuntime) -> None:
    image = app("sleeper", "import time; time.sleep(600)")
    started = await runtime.start(launch("t-reuse", image))
    marker_path = runtime.work_dir("t-reuse") / RUN_DIR / launcher.PROCESS_FILE
    marker = json.loads(marker_path.read_text())
    assert marker["pid"] == started.pid
    # Same pid, different start time: what a pid reused by another process looks like.
    launcher.write_json_atomic(marker_path, {**marker, "start_ticks": marker["start_ticks"] + 1})
    status = await runtime.poll("t-reuse")
    assert status.state is EngineState.LOST
    assert "engine lost while the node was down" in status.describe()
    # A lost engine's remains are removed (its cgroups killed): with the true record back, the launcher
    # is recognised again and reports what became of the engine.
    launcher.write_json_atomic(marker_path, marker)
    assert (await runtime.poll("t-reuse")).state in (EngineState.RUNNING, EngineState.EXITED)
    final = await runtime.stop("t-reuse", grace=LIMIT)
    assert final.state is EngineState.EXITED, final


async def test_dead_launcher_without_exit_file_is_lost(runtime: ProcessRuntime) -> None:
    image = app("sleeper", "import time; time.sleep(600)")
    started = await runtime.start(launch("t-lost", image))
    assert started.pid is not None
    os.killpg(started.pid, signal.SIGKILL)  # launcher and engine die together; nobody writes exit.json
    status = await runtime.wait("t-lost", LIMIT)
    assert status.state is EngineState.LOST
    assert "recorded no exit status" in status.describe()


async def test_ports_are_distinct_across_tasks_and_released(runtime: ProcessRuntime) -> None:
    wanted = [AppPort(name="a"), AppPort(name="b", scope="Domain", protocol="GRPC")]
    first = await runtime.allocate_ports("t1", wanted)
    second = await runtime.allocate_ports("t2", wanted)
    numbers = [p.port for p in first + second]
    assert len(set(numbers)) == 4
    assert first[1].scope == "Domain" and first[1].protocol == "GRPC"
    await runtime.release("t1")
    await runtime.release("t1")  # idempotent


async def test_task_names_must_be_dns_labels(runtime: ProcessRuntime) -> None:
    with pytest.raises(InvalidArgument, match="not a DNS label"):
        runtime.work_dir("../etc")


def test_token_hash_is_sha256_hex() -> None:
    assert token_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- exit reasons, limits and the node-side file rules ------------------------------------------------------


def test_a_crash_reads_differently_from_a_failure() -> None:
    failed = EngineStatus(EngineState.EXITED, exit_code=3, detail="cannot read input")
    assert failed.describe() == "engine exited with code 3: cannot read input" and not failed.crashed
    segv = EngineStatus(EngineState.EXITED, signal=signal.SIGSEGV)
    assert segv.describe() == "engine crashed (killed by signal SIGSEGV)" and segv.crashed
    oom = EngineStatus(
        EngineState.EXITED, signal=signal.SIGKILL, oom_killed=True, memory_limit_bytes=64 << 20
    )
    assert oom.describe() == "engine killed: memory limit 64 MiB exceeded" and oom.crashed
    assert not oom.succeeded


def test_quantities_follow_kubernetes() -> None:
    assert parse_memory("2Gi") == 2 << 30 and parse_memory("512Mi") == 512 << 20
    assert parse_memory("1G") == 10**9 and parse_memory("1e9") == 10**9 and parse_memory("4096") == 4096
    assert parse_cpu("500m") == 0.5 and parse_cpu("2") == 2.0 and parse_cpu("0.25") == 0.25
    for bad in ("", "lots", "2Gb", "-1Gi", "0"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    with pytest.raises(ValueError, match="unknown unit"):
        parse_cpu("2cores")


def test_appimage_resources_override_the_defaults_and_bad_ones_are_named() -> None:
    limits = limits_for(ResourceNeeds(memory="64Mi"), DEFAULT_LIMITS, "hog")
    assert limits == dataclasses.replace(DEFAULT_LIMITS, memory_bytes=64 << 20)
    assert limits_for(ResourceNeeds(), DEFAULT_LIMITS, "x") == DEFAULT_LIMITS
    assert EngineLimits(None, None, None, None).describe() == (
        "memory unlimited, CPU unlimited, processes unlimited, open files unlimited"
    )
    with pytest.raises(InvalidArgument, match=r"AppImage 'hog': spec.resources: cpu 'fast'") as err:
        limits_for(ResourceNeeds(cpu="fast"), DEFAULT_LIMITS, "hog")
    assert err.value.code == ErrorCode.APPIMAGE_INVALID


def test_bridge_env_points_node_services_at_the_sandbox_loopback() -> None:
    env = {
        "ACCORD_NODE_API": "http://localhost:8082",
        "ACCORD_EGRESS": "http://127.0.0.1:8081",
        "ACCORD_DATAMESH": "grpc+tcp://127.0.0.1:8071",
        "OTHER": "http://127.0.0.1:9999",
    }
    inside, targets = bridge_env(env)
    assert targets == {
        "api": ("127.0.0.1", 8082),
        "egress": ("127.0.0.1", 8081),
        "datamesh": ("127.0.0.1", 8071),
    }
    assert inside["ACCORD_NODE_API"] == "http://127.0.0.1:8082"
    assert inside["ACCORD_DATAMESH"] == "grpc+tcp://127.0.0.1:8071" and inside["OTHER"] == env["OTHER"]
    # Not URLs with a port, or a port the unprivileged shim cannot listen on: left alone, not bridged.
    inside, targets = bridge_env({"ACCORD_NODE_API": "http://127.0.0.1:80", "ACCORD_EGRESS": "nonsense"})
    assert targets == {} and inside["ACCORD_NODE_API"] == "http://127.0.0.1:80"


def test_reset_task_dir_removes_planted_links_without_following_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    task = tmp_path / "task"
    (task / "nested").mkdir(parents=True)
    (task / "kuscia").symlink_to(outside)  # a render into kuscia/ would land outside
    (task / "nested" / "link").symlink_to(outside / "precious")
    (task / "engine.log").symlink_to(outside / "precious")  # not the node's own log file: removed
    os.mkfifo(task / "fifo")
    reset_task_dir(task, keep={"engine.log"})
    assert list(task.iterdir()) == [] and (outside / "precious").read_text() == "keep me"
    fd = open_log(task / "engine.log")
    os.write(fd, b"run 1\n")
    os.close(fd)
    reset_task_dir(task, keep={"engine.log"})
    assert (task / "engine.log").read_text() == "run 1\n"  # the node's own log is kept across runs


def test_node_side_reads_refuse_links_and_fifos(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"key": "domain private key"}')
    (tmp_path / "link.json").symlink_to(secret)
    assert read_json(secret) == {"key": "domain private key"}
    assert read_json(tmp_path / "link.json") is None
    (tmp_path / "engine.log").symlink_to(secret)
    assert log_tail(tmp_path / "engine.log") == ""
    with pytest.raises(OSError):
        open_log(tmp_path / "engine.log")
    os.mkfifo(tmp_path / "fifo.log")
    assert log_tail(tmp_path / "fifo.log") == "" and read_json(tmp_path / "fifo.log") is None
    log = tmp_path / "real.log"
    log.write_text("starting\nboom\naccord sandbox: engine exited with code 3\n")
    assert log_tail(log) == "starting | boom"  # the supervisor's closing line repeats the status


def test_read_only_paths_never_expose_the_node_dir_or_a_whole_home(tmp_path: Path) -> None:
    node = tmp_path / "node"
    (node / "tasks").mkdir(parents=True)
    venv = tmp_path / "engines" / "spu-0.9.5"
    venv.mkdir(parents=True)
    paths = [venv, node, node / "tasks", Path.home(), Path("/"), tmp_path / "missing", venv]
    assert safe_read_only_paths(paths, node) == [venv.resolve()]
