"""The RunP sandbox for real: bubblewrap, cgroups, the network shim, and a supervisor that outlives its node.

Every test runs a real engine (a Python script) through `prepare_sandbox(...).argv` and checks what the
engine could and could not do from the engine's own report, plus what the host sees (cgroup files, exit
records).  Waits are bounded (a deadline to avoid hanging), never asserted as durations.

bubblewrap: under CI=true a session fixture installs it (apt-get) when missing; elsewhere the tests are
skipped with a loud reason.  The limit tests also need writable cgroups (root on the CI machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from accord.runtimes import launcher
from accord.runtimes import sandbox as sandbox_module
from accord.runtimes.cgroups import CgroupSet
from accord.runtimes.sandbox import (
    MEMORY_HEADROOM,
    PIDS_HEADROOM,
    Isolation,
    NetworkPolicy,
    PreparedSandbox,
    SandboxSpec,
    detect_isolation,
    prepare_sandbox,
    read_exit_status,
)

DEADLINE = 30.0


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_bwrap() -> Isolation:
    """The detected isolation with a working bwrap: installed under CI=true, else a loud skip."""
    iso = detect_isolation()
    if iso.bwrap is None and shutil.which("bwrap") is None and _ci():
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "bubblewrap"]):
            subprocess.run(cmd, check=False, timeout=300, capture_output=True)
        iso = detect_isolation(refresh=True)
    if iso.bwrap is None:
        reason = f"NO BUBBLEWRAP SANDBOX: {iso.bwrap_problem} (apt-get install -y bubblewrap)"
        if _ci():
            pytest.fail(f"CI=true requires a working bwrap: {reason}", pytrace=False)
        pytest.skip(reason)
    return iso


def require_cgroups(iso: Isolation) -> Isolation:
    """`iso` if memory, cpu and pids cgroups are writable (root on the CI machines), else a loud skip."""
    missing = [c for c in ("memory", "cpu", "pids") if c not in iso.cgroups.controllers]
    if missing:
        reason = f"NO WRITABLE CGROUPS for {missing}: {'; '.join(iso.cgroups.problems)}"
        if _ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return iso


@pytest.fixture(scope="session")
def isolation() -> Isolation:
    return require_bwrap()


@pytest.fixture(scope="session")
def limits_isolation(isolation: Isolation) -> Isolation:
    return require_cgroups(isolation)


@dataclasses.dataclass
class Node:
    """A fake node directory (with the domain key) holding one task dir; remembers what to clean up."""

    root: Path
    prepared: list[PreparedSandbox] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.root / "domain.key"

    def task(self, name: str, engine: str) -> Path:
        task = self.root / "tasks" / name
        task.mkdir(parents=True)
        (task / "engine.py").write_text(textwrap.dedent(engine))
        return task

    def prepare(self, task: Path, *args: str, iso: Isolation, **kw: object) -> PreparedSandbox:
        spec = SandboxSpec(
            task_dir=task,
            argv=[sys.executable, "engine.py", *args],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
            node_dir=self.root,
            cgroup_name=f"accordtest-{task.name}-{uuid.uuid4().hex[:8]}",
            **kw,  # type: ignore[arg-type]
        )
        prepared = prepare_sandbox(spec, iso)
        self.prepared.append(prepared)
        return prepared


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "node"
    root.mkdir(mode=0o700)
    (root / "domain.key").write_text("-----BEGIN PRIVATE KEY----- not for engines")
    os.chmod(root / "domain.key", 0o600)
    fake = Node(root)
    yield fake
    for prepared in fake.prepared:  # whatever a failed test left running, and its cgroups
        prepared.cleanup()


async def _run(prepared: PreparedSandbox, log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as fh:
        return await asyncio.create_subprocess_exec(
            *prepared.argv,
            env=prepared.env,
            cwd=prepared.task_dir,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def _finish(proc: asyncio.subprocess.Process, log: Path) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"engine did not finish; log:\n{log.read_text()}") from None


def _json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@dataclasses.dataclass
class HostServers:
    bridged: int
    unbridged: int
    hits: list[str]


@pytest.fixture
async def host_servers() -> AsyncIterator[HostServers]:
    """Two tiny HTTP servers on the host's 127.0.0.1: one the engine may reach, one it must not."""
    hits: list[str] = []

    def responder(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            hits.append(name)
            body = f"hello from the host's {name} service".encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        return handle

    bridged = await asyncio.start_server(responder("bridged"), "127.0.0.1", 0)
    unbridged = await asyncio.start_server(responder("unbridged"), "127.0.0.1", 0)
    try:
        yield HostServers(bridged.sockets[0].getsockname()[1], unbridged.sockets[0].getsockname()[1], hits)
    finally:
        for server in (bridged, unbridged):
            server.close()
            await server.wait_closed()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROBE = """
import http.server, json, os, socket, sys, threading, time, urllib.request
key, bridged, unbridged, service = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
report = {"uid": os.getuid()}
def attempt(name, action):
    try:
        report[name] = ["ok", action()]
    except Exception as exc:
        report[name] = ["error", f"{type(exc).__name__}: {exc}"]
def write(path):
    with open(path, "w") as fh:
        fh.write("planted")
attempt("read_key", lambda: open(key).read())
attempt("write_usr", lambda: write("/usr/accord-sandbox-planted"))
attempt("write_node_dir", lambda: write(os.path.join(os.path.dirname(key), "planted")))
attempt("read_shadow", lambda: open("/etc/shadow").read()[:10])
attempt("write_task_dir", lambda: write(os.path.join(os.getcwd(), "result.txt")))
attempt("read_task_dir", lambda: open(os.path.join(os.getcwd(), "input.txt")).read())
attempt("write_private_tmp", lambda: write("/tmp/libpsi-trace"))
attempt("tmp_entries", lambda: sorted(os.listdir("/tmp")))
attempt("semaphore", lambda: __import__("multiprocessing").Lock() and None)
attempt("unbridged_host_port", lambda: socket.create_connection(("127.0.0.1", unbridged), timeout=5).close())
attempt("outside_network", lambda: socket.create_connection(("192.0.2.1", 80), timeout=5).close())
attempt("bridged", lambda: urllib.request.urlopen(f"http://127.0.0.1:{bridged}/", timeout=10).read().decode())
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the engine"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", service), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
with open("report.tmp", "w") as fh:
    json.dump(report, fh)
os.replace("report.tmp", "report.json")
for _ in range(600):
    if os.path.exists("done"):
        break
    time.sleep(0.1)
server.shutdown()
"""


async def test_engine_is_confined_but_reaches_exactly_its_bridged_services(
    node: Node, isolation: Isolation, host_servers: HostServers
) -> None:
    task = node.task("confined", PROBE)
    (task / "input.txt").write_text("the task's input")
    service = _free_port()
    policy = NetworkPolicy(outbound={"api": ("127.0.0.1", host_servers.bridged)}, inbound=[service])
    prepared = node.prepare(
        task, str(node.key), str(host_servers.bridged), str(host_servers.unbridged), str(service),
        iso=isolation, network=policy,
    )  # fmt: skip
    assert prepared.via_bwrap and prepared.needs_bridge
    async with prepared.host_bridge():
        proc = await _run(prepared, task / "engine.log")
        await _until(lambda: (task / "report.json").exists() or proc.returncode is not None, "the report")
        report = _json(task / "report.json")
        # The host reaches the engine's own service port through the bridge.
        reader, writer = await asyncio.open_connection("127.0.0.1", service)
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
        writer.close()
        (task / "done").touch()
        assert await _finish(proc, task / "engine.log") == 0, (task / "engine.log").read_text()

    assert b"hello from the engine" in answer
    assert report["uid"] == 65534 if isolation.as_root else os.getuid()
    assert report["read_key"][0] == "error"  # type: ignore[index]
    assert report["write_usr"][0] == "error" and "Read-only" in str(report["write_usr"])  # type: ignore[index]
    assert report["write_node_dir"][0] == "error"  # type: ignore[index]
    assert not (node.root / "planted").exists()
    if isolation.as_root:
        assert report["read_shadow"][0] == "error"  # type: ignore[index]
    assert report["unbridged_host_port"][0] == "error"  # type: ignore[index]
    assert report["outside_network"][0] == "error"  # type: ignore[index]
    assert report["write_task_dir"] == ["ok", None]
    assert (task / "result.txt").read_text() == "planted"
    assert report["read_task_dir"] == ["ok", "the task's input"]
    assert report["write_private_tmp"] == ["ok", None] and report["semaphore"] == ["ok", None]
    tmp_entries = report["tmp_entries"][1]  # type: ignore[index]
    assert "libpsi-trace" in tmp_entries and not (Path("/tmp") / "libpsi-trace").exists()
    # nothing of the host's /tmp but the task dir and what the sandbox binds back for the engine chain
    # (the interpreter and the accord source, when the checkout itself lives under /tmp)
    bound = {
        p.parts[2] for p in sandbox_module._needed_paths() if p.parts[1:2] == ("tmp",) and len(p.parts) > 2
    }
    assert set(tmp_entries) <= {"libpsi-trace", *Path(task).parts[2:3], *bound}
    assert report["bridged"] == ["ok", "hello from the host's bridged service"]
    assert host_servers.hits == ["bridged"]  # the unbridged server never saw a connection
    status = read_exit_status(task)
    assert status is not None and status.exit_code == 0 and status.reason == "engine exited with code 0"
    assert not (task / ".sandbox" / "env.json").exists()  # the engine's env (its token) is gone


MEMORY_HOG = """
import sys
hog = b"x" * (400 << 20)
print("allocated", len(hog))
sys.exit(0)
"""


async def test_memory_limit_is_an_oom_kill_reported_as_such(node: Node, limits_isolation: Isolation) -> None:
    task = node.task("memory", MEMORY_HOG)
    prepared = node.prepare(task, iso=limits_isolation, memory_bytes=64 << 20)
    assert prepared.cgroup is not None and prepared.warnings == []
    proc = await _run(prepared, task / "engine.log")
    returncode = await _finish(proc, task / "engine.log")
    status = read_exit_status(task)
    assert status is not None, (task / "engine.log").read_text()
    assert status.oom_killed and status.signal == signal.SIGKILL
    assert status.reason == "engine killed: memory limit 64 MiB exceeded"
    assert returncode == -signal.SIGKILL  # the supervisor dies like the engine did
    assert "memory limit 64 MiB exceeded" in (task / "engine.log").read_text()
    assert not prepared.cgroup.exists()


FORKER = """
import json, os, sys
children, failure = [], None
read_end, write_end = os.pipe()
for _ in range(64):
    try:
        pid = os.fork()
    except OSError as exc:
        failure = exc.errno
        break
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    children.append(pid)
os.close(write_end)
for pid in children:
    os.waitpid(pid, 0)
with open("forks.json", "w") as fh:
    json.dump({"forked": len(children), "errno": failure}, fh)
sys.exit(3)
"""


async def test_pids_limit_stops_a_fork_bomb(node: Node, limits_isolation: Isolation) -> None:
    task = node.task("pids", FORKER)
    prepared = node.prepare(task, iso=limits_isolation, pids_max=12)
    proc = await _run(prepared, task / "engine.log")
    assert await _finish(proc, task / "engine.log") == 3
    forks = _json(task / "forks.json")
    assert forks["errno"] == errno.EAGAIN
    # The engine's budget of 12 plus the sandbox's headroom (bwrap's monitor and init count too).
    assert isinstance(forks["forked"], int) and 12 <= forks["forked"] < 12 + PIDS_HEADROOM
    status = read_exit_status(task)
    assert status is not None and status.exit_code == 3 and status.pids_limit_hits > 0
    assert "process limit 12 reached" in status.reason


WAITER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (open("got-sigterm", "w").close(), sys.exit(int(sys.argv[1]))))
open("started", "w").close()
for _ in range(600):
    if os.path.exists("go"):
        sys.exit(7)
    time.sleep(0.1)
sys.exit(99)
"""


async def test_limits_are_written_and_cgroups_removed_after_exit(
    node: Node, limits_isolation: Isolation
) -> None:
    task = node.task("limits", WAITER)
    prepared = node.prepare(
        task, "0", iso=limits_isolation, memory_bytes=256 << 20, cpu_cores=0.5, pids_max=64, open_files=128
    )
    cgroup = prepared.cgroup
    assert cgroup is not None
    proc = await _run(prepared, task / "engine.log")
    await _until(lambda: (task / "started").exists(), "the engine to start")
    assert cgroup.read("cpu", "cpu.cfs_quota_us") == "50000"
    assert cgroup.read("cpu", "cpu.cfs_period_us") == "100000"
    # The engine's budgets plus the headroom for the sandbox's own processes, which share the groups.
    assert cgroup.read("memory", "memory.limit_in_bytes") == str((256 << 20) + MEMORY_HEADROOM)
    assert cgroup.read("pids", "pids.max") == str(64 + PIDS_HEADROOM)
    members = cgroup.pids()
    assert members  # bwrap's monitor, the namespace's init and the engine
    per_controller = [CgroupSet(cgroup.version, {c: d}).pids() for c, d in cgroup.dirs.items()]
    assert all(p == per_controller[0] for p in per_controller)  # one set of processes in every hierarchy
    limits = [Path(f"/proc/{pid}/limits").read_text() for pid in members]
    assert all("Max open files            128                  128" in text for text in limits)
    (task / "go").touch()
    assert await _finish(proc, task / "engine.log") == 7
    assert not cgroup.exists()


async def test_sigterm_reaches_the_engine_and_sigkill_takes_the_sandbox_down(
    node: Node, limits_isolation: Isolation
) -> None:
    # Graceful: SIGTERM to the supervisor (what the runtime's stop does) reaches the engine inside.
    task = node.task("graceful", WAITER)
    prepared = node.prepare(task, "0", iso=limits_isolation, pids_max=32)
    proc = await _run(prepared, task / "engine.log")
    await _until(lambda: (task / "started").exists(), "the engine to start")
    proc.send_signal(signal.SIGTERM)
    assert await _finish(proc, task / "engine.log") == 0
    assert (task / "got-sigterm").exists()
    # Last resort: SIGKILL of the supervisor; --die-with-parent ends the sandbox, cleanup() the cgroups.
    task2 = node.task("killed", WAITER.replace("sys.exit(int(sys.argv[1]))", "None"))
    prepared2 = node.prepare(task2, "0", iso=limits_isolation, pids_max=32)
    cgroup = prepared2.cgroup
    assert cgroup is not None
    with subreaper() as orphans:  # bwrap's monitor loses its parent: reap it here, not leave a zombie
        proc2 = await _run(prepared2, task2 / "engine.log")
        await _until(lambda: (task2 / "started").exists(), "the second engine to start")
        assert cgroup.pids()
        monitors = _children_of(proc2.pid)
        orphans.extend([*monitors, *(init for pid in monitors for init in _children_of(pid))])
        proc2.kill()
        await _finish(proc2, task2 / "engine.log")
        await _until(lambda: not cgroup.pids(), "the sandbox to die with its supervisor")
    assert prepared2.cleanup() == []
    assert not cgroup.exists()


NODE_STANDIN = """
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from accord.runtimes import launcher
from accord.runtimes.sandbox import PreparedSandbox
task = sys.argv[2]
prepared = PreparedSandbox.load(task)
launcher.write_json_atomic(
    __import__("pathlib").Path(task) / launcher.LAUNCH_FILE, {"uid": "u1", "argv": prepared.argv, "cwd": task}
)
log = open(task + "/engine.log", "ab")
child = subprocess.Popen(
    [sys.executable, "-I", launcher.__file__, task], cwd=task, env=prepared.env,
    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
)
print(child.pid, flush=True)
time.sleep(600)
"""


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "stat").read_text()
                if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def subreaper() -> Iterator[list[int]]:
    """Make this process the reaper of orphans below it; reap the listed pids (bounded) on the way out."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    orphans: list[int] = []
    try:
        yield orphans
    finally:
        for pid in orphans:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.05)
        libc.prctl(36, 0, 0, 0, 0)


async def test_engine_survives_the_death_of_its_node_and_its_exit_is_recorded(
    node: Node, limits_isolation: Isolation
) -> None:
    task = node.task("survivor", WAITER)
    prepared = node.prepare(task, "0", iso=limits_isolation, memory_bytes=128 << 20, pids_max=32)
    src = str(Path(launcher.__file__).resolve().parents[2])
    # Orphans (the runtime's launcher, once its node is killed) come back to this test, to be reaped.
    with subreaper() as orphans:
        standin = subprocess.Popen(
            [sys.executable, "-c", NODE_STANDIN, src, str(task)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert standin.stdout is not None
            orphans.append(int(standin.stdout.readline()))  # the launcher
            await _until(lambda: (task / "started").exists(), "the engine to start")
            standin.kill()  # the node dies hard
            standin.wait(timeout=DEADLINE)
            cgroup = prepared.cgroup
            assert cgroup is not None and cgroup.pids()  # the engine still runs
            assert not (task / "exit.json").exists()
            (task / "go").touch()
            await _until(lambda: (task / "exit.json").exists(), "the launcher's exit record")
            assert _json(task / "exit.json")["exit_code"] == 7  # the runtime's wrapper saw the engine's code
            status = read_exit_status(task)
            assert (
                status is not None and status.exit_code == 7 and status.reason == "engine exited with code 7"
            )
            await _until(lambda: not cgroup.exists(), "the supervisor to remove the cgroups")
        finally:
            if standin.poll() is None:
                standin.kill()
                standin.wait()


async def test_without_bwrap_limits_still_apply_and_the_gaps_are_reported(
    node: Node, limits_isolation: Isolation, tmp_path: Path
) -> None:
    plain = dataclasses.replace(limits_isolation, bwrap=None, bwrap_problem="bwrap disabled for this test")
    assert plain.describe().startswith("no sandbox (bwrap disabled for this test;")
    task = node.task("plain", MEMORY_HOG)
    prepared = node.prepare(
        task, iso=plain, memory_bytes=64 << 20, network=NetworkPolicy(outbound={"api": ("127.0.0.1", 1)})
    )
    assert not prepared.via_bwrap
    assert any("network isolation" in w for w in prepared.warnings)
    assert "NOT enforced" in prepared.describe()
    proc = await _run(prepared, task / "engine.log")
    await _finish(proc, task / "engine.log")
    status = read_exit_status(task)
    assert status is not None and status.oom_killed, (task / "engine.log").read_text()
    assert status.reason == "engine killed: memory limit 64 MiB exceeded"


NON_ROOT_NODE = """
import json, subprocess, sys
from pathlib import Path
from accord.runtimes.sandbox import SandboxSpec, detect_isolation, prepare_sandbox, read_exit_status
iso = detect_isolation()
task, node = Path(sys.argv[1]), Path(sys.argv[2])
prepared = prepare_sandbox(
    SandboxSpec(task_dir=task, argv=[sys.executable, "engine.py", "0"], node_dir=node, cpu_cores=1.0), iso
)
with open(task / "engine.log", "ab") as log:
    code = subprocess.run(prepared.argv, env=prepared.env, cwd=task, stdout=log, stderr=log).returncode
status = read_exit_status(task)
print(json.dumps({"describe": prepared.describe(), "code": code, "reason": status and status.reason}))
"""

KEY_READER = """
import json, os, sys
try:
    open(sys.argv[1]).read()
    key = "read"
except OSError as exc:
    key = exc.strerror
json.dump({"uid": os.getuid(), "key": key}, open("report.json", "w"))
"""


def test_a_node_not_running_as_root_gets_a_user_namespace_sandbox(
    tmp_path: Path, isolation: Isolation
) -> None:
    """The node as an ordinary user (uid 65534 here): no cgroups, bwrap in a user namespace, key hidden."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not isolation.as_root or python is None or not isolation.user_namespaces:
        pytest.skip("needs root (to become another user), /usr/bin/python3 and user namespaces")
    base = Path(tempfile.mkdtemp(prefix="accord-nonroot-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        node = base / "node"
        task = node / "tasks" / "t1"
        task.mkdir(parents=True)
        (node / "domain.key").write_text("secret")
        (task / "engine.py").write_text(KEY_READER.replace("sys.argv[1]", repr(str(node / "domain.key"))))
        for path in (node, task.parent, task, node / "domain.key", task / "engine.py"):
            os.chown(path, 65534, 65534)
        os.chmod(node, 0o700)
        src = str(Path(launcher.__file__).resolve().parents[2])
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", NON_ROOT_NODE,
             str(task), str(node)],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": src}, cwd=base, capture_output=True, text=True,
            timeout=DEADLINE,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["code"] == 0 and result["reason"] == "engine exited with code 0"
        assert "engines keep the node's uid (user namespace)" in result["describe"]
        assert "NOT enforced: cpu limit 1.0 (no writable cpu cgroup)" in result["describe"]
        report = _json(task / "report.json")
        assert report == {"uid": 65534, "key": "No such file or directory"}  # hidden, not merely denied
    finally:
        shutil.rmtree(base, ignore_errors=True)
