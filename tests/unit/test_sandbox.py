"""The sandbox's pure parts and host-side safety checks, without bubblewrap: cgroup discovery from
/proc texts, exit-status decoding from real control files, the command chain `prepare_sandbox` builds,
and the host bridge refusing inbound sockets the engine could have planted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from accord.runtimes.cgroups import (
    CgroupError,
    CgroupLayout,
    CgroupSet,
    Limits,
    detect_cgroups,
    parse_mountinfo,
    parse_proc_cgroup,
)
from accord.runtimes.netshim import IN_DIR, HostBridge
from accord.runtimes.sandbox import (
    Isolation,
    NetworkPolicy,
    PreparedSandbox,
    SandboxError,
    SandboxSpec,
    exit_reason,
    exit_status,
    prepare_sandbox,
)

HYBRID_MOUNTINFO = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
"""
HYBRID_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f97a\n1:cpu:/\n0::/\n"
UNIFIED_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_cgroup_discovery_reads_the_layout_from_proc_texts() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [(m.mount_point, m.version, m.controllers) for m in mounts][:2] == [
        ("/sys/fs/cgroup/unified", 2, ()),
        ("/sys/fs/cgroup/cpu", 1, ("cpu",)),
    ]
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP)
    assert v1["memory"] == "/process_api/f97a" and v1["pids"] == "/" and v2 == "/"
    layout = detect_cgroups(HYBRID_MOUNTINFO, HYBRID_CGROUP, probe=False)
    assert layout.version == "v1"
    assert dict(layout.bases) == {
        "memory": "/sys/fs/cgroup/memory/process_api/f97a",  # nested: the node's own group, not the root
        "cpu": "/sys/fs/cgroup/cpu",
        "pids": "/sys/fs/cgroup/pids",
    }
    assert layout.describe() == "cgroup v1 (memory, cpu, pids)"


def test_cgroup_v2_without_delegated_controllers_is_reported_not_used(tmp_path: Path) -> None:
    mountinfo = UNIFIED_MOUNTINFO.replace("/sys/fs/cgroup", str(tmp_path))
    (tmp_path / "user.slice" / "node").mkdir(parents=True)
    (tmp_path / "user.slice" / "cgroup.controllers").write_text("cpuset io\n")
    layout = detect_cgroups(mountinfo, "0::/user.slice/node\n", probe=False)
    assert layout.version == "none" and not layout.controllers
    assert "delegates none of memory, cpu, pids" in layout.problems[0]
    (tmp_path / "user.slice" / "cgroup.controllers").write_text("cpu memory pids\n")
    layout = detect_cgroups(mountinfo, "0::/user.slice/node\n", probe=False)
    assert layout.version == "v2" and layout.controllers == ("memory", "cpu", "pids")
    # Engines go into a sibling branch of the node's own leaf ("no internal processes" rule).
    assert set(layout.bases.values()) == {str(tmp_path / "user.slice")}


def _fake_group(root: Path, files: dict[str, str]) -> CgroupSet:
    """A v1 CgroupSet over plain directories holding the control files a kernel would show."""
    dirs = {}
    for ctrl in ("memory", "cpu", "pids"):
        (root / ctrl).mkdir(parents=True, exist_ok=True)
        dirs[ctrl] = str(root / ctrl)
    for name, content in files.items():
        (root / name).write_text(content)
    return CgroupSet("v1", dirs)


def test_exit_status_tells_oom_from_signals_and_exit_codes(tmp_path: Path) -> None:
    oom = _fake_group(
        tmp_path / "oom",
        {
            "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            "memory/memory.limit_in_bytes": str(256 << 20),
        },
    )
    assert exit_reason(137, oom, via_bwrap=True) == "engine killed: memory limit 256 MiB exceeded"
    status = exit_status(-9, oom)
    assert status.oom_killed and status.signal == signal.SIGKILL and status.exit_code is None

    plain = _fake_group(tmp_path / "plain", {"memory/memory.oom_control": "oom_kill 0\n"})
    assert exit_reason(137, plain, via_bwrap=True) == "engine killed by signal SIGKILL"
    assert exit_reason(137, plain) == "engine exited with code 137"  # without bwrap 137 is just a code
    assert exit_reason(-11, None) == "engine killed by signal SIGSEGV"
    assert exit_reason(3, None) == "engine exited with code 3"
    assert exit_reason(0, None) == "engine exited with code 0"


def test_exit_status_mentions_a_reached_process_limit_and_reads_v2_files(tmp_path: Path) -> None:
    pids = _fake_group(tmp_path / "v1", {"pids/pids.events": "max 4\n", "pids/pids.max": "12\n"})
    assert exit_reason(1, pids) == "engine exited with code 1 (process limit 12 reached 4 times)"
    assert exit_reason(0, pids) == "engine exited with code 0"
    v2dir = tmp_path / "v2"
    v2dir.mkdir()
    (v2dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (v2dir / "memory.max").write_text(f"{64 << 20}\n")
    v2 = CgroupSet("v2", {c: str(v2dir) for c in ("memory", "cpu", "pids")})
    assert v2.procs_files() == [str(v2dir / "cgroup.procs")]  # one directory joined once
    assert exit_reason(-9, v2) == "engine killed: memory limit 64 MiB exceeded"
    assert CgroupSet.from_dict(json.loads(json.dumps(v2.to_dict()))) == v2


def _isolation(*, bwrap: bool, cgroups: CgroupLayout | None = None) -> Isolation:
    return Isolation(
        bwrap="/usr/bin/bwrap" if bwrap else None,
        bwrap_version="0.8.0" if bwrap else "",
        bwrap_problem="" if bwrap else "bwrap not installed",
        user_namespaces=True,
        as_root=os.geteuid() == 0,
        setpriv="/usr/bin/setpriv",
        prlimit="/usr/bin/prlimit",
        cgroups=cgroups or CgroupLayout("none", problems=("no cgroups in this test",)),
    )


def _task(tmp_path: Path) -> tuple[Path, Path]:
    node = tmp_path / "node"
    task = node / "tasks" / "t1"
    task.mkdir(parents=True)
    (node / "domain.key").write_text("secret")
    return node, task


def test_chain_hides_the_node_dir_binds_the_task_dir_and_keeps_secrets_out_of_argv(tmp_path: Path) -> None:
    node, task = _task(tmp_path)
    policy = NetworkPolicy(
        outbound={"egress": ("127.0.0.1", 18091), "api": ("127.0.0.1", 18092)}, inbound=[19001]
    )
    spec = SandboxSpec(
        task_dir=task,
        argv=["engine", "--flag"],
        env={"ACCORD_TOKEN": "one-time-secret", "PATH": "/usr/bin"},
        node_dir=node,
        open_files=256,
        network=policy,
    )
    prepared = prepare_sandbox(spec, _isolation(bwrap=True))
    argv = prepared.argv
    assert "one-time-secret" not in " ".join(argv)  # secrets travel in the 0600 env file, not in argv
    env = json.loads((task / ".sandbox" / "env.json").read_text())
    assert env == {"HOME": str(task), "ACCORD_TOKEN": "one-time-secret", "PATH": "/usr/bin"}
    assert set(prepared.env) == {"PATH", "LANG"}  # what the root-run chain itself gets

    bwrap = argv.index("/usr/bin/bwrap")
    assert argv[bwrap - 2 : bwrap] == ["--nofile=256:256", "--"]
    flags = argv[bwrap:]
    assert "--unshare-net" in flags and "--share-net" not in flags
    assert "--die-with-parent" in flags and "--new-session" in flags
    hide = flags.index(str(node.resolve()))
    assert flags[hide - 1] == "--tmpfs"
    bind = flags.index("--bind")
    assert flags[bind : bind + 3] == ["--bind", str(task.resolve()), str(task.resolve())] and bind > hide
    control = str(task.resolve() / ".sandbox")
    assert ["--ro-bind", control, control] == flags[flags.index(control) - 1 : flags.index(control) + 2]
    assert flags[flags.index("--chdir") + 1] == str(task.resolve())
    if os.geteuid() == 0:
        setpriv = flags.index("/usr/bin/setpriv")
        assert {"--reuid=65534", "--regid=65534", "--no-new-privs", "--clear-groups"} <= set(flags[setpriv:])
        assert prepared.sandbox_uid == 65534
        assert os.stat(task).st_uid == 65534 and os.stat(task / ".sandbox").st_uid == 0
        assert stat.S_IMODE(os.stat(task / ".sandbox" / "env.json").st_mode) == 0o600
    stub = flags.index("--env-file")
    assert flags[stub:].count("--") == 1 and flags[-2:] == ["engine", "--flag"]
    assert {"--out=18091=egress", "--out=18092=api", "--in=19001"} <= set(flags[stub:])
    assert prepared.needs_bridge and prepared.warnings == []

    again = PreparedSandbox.load(task)
    assert again.argv == prepared.argv and again.network == prepared.network and again.cgroup is None


def test_protected_entries_stay_the_nodes_and_are_read_only_inside(tmp_path: Path) -> None:
    node, task = _task(tmp_path)
    (task / "engine.log").write_text("node's log\n")
    (task / "conf").mkdir()
    (task / "conf" / "task.json").write_text("{}")
    spec = SandboxSpec(task_dir=task, argv=["engine"], node_dir=node, protected=("engine.log",))
    prepared = prepare_sandbox(spec, _isolation(bwrap=True))
    log = str(task.resolve() / "engine.log")
    at = prepared.argv.index(log)
    assert prepared.argv[at - 1 : at + 2] == ["--ro-bind", log, log]
    if os.geteuid() == 0:
        # The engine owns what it may change; the node keeps the directory (sticky) and its own entries.
        info = os.stat(task)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 65534, 0o1771)
        assert os.stat(task / "engine.log").st_uid == 0 and os.stat(task / ".sandbox").st_uid == 0
        assert os.stat(task / "conf").st_uid == 65534 and os.stat(task / "conf" / "task.json").st_uid == 65534


def test_limits_that_cannot_be_enforced_are_reported(tmp_path: Path) -> None:
    node, task = _task(tmp_path)
    spec = SandboxSpec(
        task_dir=task, argv=["engine"], node_dir=node, memory_bytes=64 << 20, cpu_cores=0.5, pids_max=10,
        network=NetworkPolicy(mode="host"),
    )  # fmt: skip
    prepared = prepare_sandbox(spec, _isolation(bwrap=True))
    assert "--unshare-net" not in prepared.argv
    assert f"--data={64 << 20}:{64 << 20}" in prepared.argv
    text = prepared.describe()
    assert "NOT enforced" in text
    assert "memory limit 64 MiB only as RLIMIT_DATA" in text
    assert "cpu limit 0.5 (no writable cpu cgroup)" in text
    assert "pids limit 10 (no writable pids cgroup)" in text
    assert "host network, by request" in text


def test_without_bwrap_the_description_says_what_is_missing(tmp_path: Path) -> None:
    iso = _isolation(bwrap=False)
    assert iso.describe() == (
        "no sandbox (bwrap not installed; engines share the host's network and filesystem: apt-get install "
        "bubblewrap) + no cgroups (no cgroups in this test) + prlimit (open files)"
    )
    node, task = _task(tmp_path)
    prepared = prepare_sandbox(
        SandboxSpec(
            task_dir=task, argv=["engine"], node_dir=node, network=NetworkPolicy(outbound={"a": ("h", 1)})
        ),
        iso,
    )
    assert "/usr/bin/bwrap" not in prepared.argv and "--pdeathsig" in prepared.argv
    assert any("network isolation" in w for w in prepared.warnings)
    assert not prepared.needs_bridge


# ------------------------------------------------------------------------------- host bridge checks


async def _inbound_reaches(bridge_port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge_port)
    writer.write(b"ping")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_host_bridge_refuses_inbound_sockets_the_engine_could_have_planted(tmp_path: Path) -> None:
    task = tmp_path / "task"
    (task / ".sandbox" / "out").mkdir(parents=True)
    (task / IN_DIR).mkdir()
    port = _free_port()
    victim_hits: list[bytes] = []

    async def victim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        victim_hits.append(await reader.read(4))
        writer.write(b"victim")
        writer.close()

    # A host socket the engine would love to reach (think: docker.sock), linked into the inbound dir.
    victim_server = await asyncio.start_unix_server(victim, path=str(tmp_path / "host.sock"))
    os.symlink(tmp_path / "host.sock", task / IN_DIR / str(port))
    sandbox_uid = os.getuid() + 1 if os.getuid() == 0 else os.getuid()
    bridge = HostBridge(task, {}, [port], sandbox_uid=sandbox_uid, connect_wait=0.3)
    async with bridge:
        assert await _inbound_reaches(port) == b""  # closed: a symlink is never followed
        os.unlink(task / IN_DIR / str(port))
        if os.getuid() == 0:  # a socket owned by someone else (hard link or root's own) is refused too
            planted = socket.socket(socket.AF_UNIX)
            planted.bind(str(task / IN_DIR / str(port)))
            planted.listen()
            assert await _inbound_reaches(port) == b""
            os.chown(task / IN_DIR / str(port), sandbox_uid, -1)

            def serve_once() -> bytes:  # in a thread: the bridge needs this event loop to forward
                planted.settimeout(10)
                conn, _ = planted.accept()
                with conn:
                    conn.settimeout(10)
                    got = conn.recv(4)
                    conn.sendall(b"pong")
                return got

            served = asyncio.get_running_loop().run_in_executor(None, serve_once)
            assert await _inbound_reaches(port) == b"pong"  # the sandbox's own socket is served
            assert await asyncio.wait_for(served, 10) == b"ping"
            planted.close()
    victim_server.close()
    await victim_server.wait_closed()
    assert victim_hits == []


async def test_host_bridge_outbound_socket_leads_to_its_target_only(tmp_path: Path) -> None:
    task = tmp_path / "task"
    (task / ".sandbox" / "out").mkdir(parents=True)
    (task / IN_DIR).mkdir()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"target:" + await reader.read(4))
        writer.close()

    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    async with HostBridge(task, {"api": ("127.0.0.1", port)}, sandbox_uid=None):
        sock_path = task / ".sandbox" / "out" / "api"
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b"target:ping"
        writer.close()
    target.close()
    await target.wait_closed()


def test_invalid_cgroup_names_are_refused(tmp_path: Path) -> None:
    layout = CgroupLayout("v1", {"pids": str(tmp_path)})
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        CgroupSet.create(layout, "../escape", Limits())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "policy",
    [
        NetworkPolicy(outbound={"egress": ("127.0.0.1", 8000)}, inbound=[8000]),
        NetworkPolicy(outbound={"../api": ("127.0.0.1", 8001)}),
        NetworkPolicy(inbound=[70000]),
    ],
)
def test_ambiguous_or_unsafe_bridges_are_refused(tmp_path: Path, policy: NetworkPolicy) -> None:
    node, task = _task(tmp_path)
    with pytest.raises(SandboxError):
        prepare_sandbox(
            SandboxSpec(task_dir=task, argv=["engine"], node_dir=node, network=policy), _isolation(bwrap=True)
        )
