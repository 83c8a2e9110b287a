"""PSI figures side by side: bare SPU vs the Accord SPU engine (direct, through gateways, under nodes),
and the built-in engine, on the same data, unpinned and with each party pinned to one core.

    .venv/bin/python bench/psi.py --rows 1000000 [--overlap 0.5] [--modes bare,engine,gateway,nodes,builtin]
                                  [--pinning free,pinned] [--repeat 1] [--keep]

Data: `bench/psi_builtin.py`'s generator (alice `id,age`, bob `id,score`, ids like `u004f8c1ec819_845545`,
the given overlap, shuffled, fixed seed).  Every run is checked against a Python set intersection and
for row alignment between the two outputs.  Modes (all RR22, both parties receive):

    bare     two processes of SPU's own venv calling `spu.psi.psi_execute` on the CSV files, brpc link
             straight between them (connect retry 100 ms): the baseline
    engine   `python -m accord.engines.spu_psi` with the engine contract and a direct link (allocated port
             `spu`): what the engine adds (reading, duplicate check, libpsi's input file, hello/fin,
             output) without any gateway
    gateway  the same engine in blackbox mode through two gateway processes' PTP transport (mTLS between
             them): what Accord runs, minus orchestration.  Gateways start before the clock.
    nodes    a real two-node job (`accord node start` x 2, data registered in DataMesh, the job submitted
             at alice): submit -> the job's recorded completion time (Succeeded), including proposal,
             prepare/start rounds, DataMesh in and out; the job is polled every 0.5 s only
    builtin  the built-in ECDH engine (`accord.engines.psi`) on the same data, as `bench/psi_builtin.py`

`ratio` is a mode's wall time over bare's with the same pinning (goal for gateway/nodes: <= 1.15).  Peak
RSS is sampled every 50 ms over each party's whole process tree (guard + party process + libpsi's
`sort`; for `nodes`, the node process and everything it started, and the engine alone; gateways are
reported apart).
"pinned" runs everything of alice on core 0 and of bob on core 1 (`taskset`, or the node's affinity).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

PARTIES = ("alice", "bob")
TASK = "bench-spu"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- roles run in child processes -------------------------------------------------------------------


def bare_party(args: argparse.Namespace) -> None:
    """One party of plain SPU (runs in SPU's venv): the baseline."""
    import spu.libspu as libspu
    from spu import psi

    ports = [int(p) for p in args.ports.split(",")]
    desc = libspu.link.Desc()
    desc.id = "bench-bare"
    desc.recv_timeout_ms = 600_000
    desc.http_timeout_ms = 600_000
    desc.connect_retry_interval_ms = 100
    desc.connect_retry_times = 600
    for name, port in zip(PARTIES, ports, strict=True):
        desc.add_party(name, f"127.0.0.1:{port}")
    started = time.monotonic()
    lctx = libspu.link.create_brpc(desc, args.rank)
    linked = time.monotonic()
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=psi.PsiProtocol.PROTOCOL_RR22, receiver_rank=0, broadcast_result=True
        ),
        input_params=psi.InputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=args.input, selected_keys=["id"], keys_unique=True
        ),
        output_params=psi.OutputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=args.output, disable_alignment=False
        ),
        join_conf=psi.ResultJoinConfig(type=psi.ResultJoinType.JOIN_TYPE_INNER_JOIN),
    )
    report = psi.psi_execute(config, lctx)
    done = time.monotonic()
    # psi_execute does not end at the same moment at both parties, and its last message may still sit in
    # yacl's send queue when it returns: exchange one message (as the engine's fin does), then give the
    # send thread a moment before leaving -- after the clock stopped (`end`), so it costs bare nothing.
    lctx.send(1 - args.rank, "fin")
    lctx.recv(1 - args.rank)
    end = time.monotonic()
    result = {
        "link_s": linked - started,
        "psi_s": done - linked,
        "intersection": report.intersection_count,
        "end": end,
    }
    Path(args.result).write_text(json.dumps(result))
    sys.stdout.flush()
    time.sleep(0.5)
    os._exit(0)


# -- measuring -------------------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    pinning: str
    wall_s: float
    parties: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0


def pin(command: list[str], pinned: bool, index: int) -> list[str]:
    return ["taskset", "-c", str(index), *command] if pinned else command


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCORD_", "TASK_", "KUSCIA_"))}
    env.update(extra)
    return env


def run_bare(spu: Path, data: Path, work: Path, pinned: bool, timeout: float) -> Run:
    from accord.engines.spu_psi.files import TraceFiles

    # libpsi caches what it learnt of an input CSV in `<input>.meta` next to it and skips its whole
    # pre-process check (0.6-0.7 s at 1M rows) when the file is there: every run starts cold, as the
    # engine's (whose libpsi input is written afresh each time) does.
    for meta in data.glob("*.meta"):
        meta.unlink()
    ports = ",".join(str(free_port()) for _ in PARTIES)
    procs = {}
    for index, party in enumerate(PARTIES):
        d = work / party
        d.mkdir(parents=True)
        command = [
            str(spu),
            str(Path(__file__).resolve()),
            "--role",
            "bare-party",
            "--rank",
            str(index),
            "--ports",
            ports,
            "--input",
            str(data / f"{party}.csv"),
            "--output",
            str(d / "output.csv"),
            "--result",
            str(d / "result.json"),
        ]
        procs[party] = subprocess.Popen(
            pin(command, pinned, index),
            cwd=d,
            env=clean_env({"TMPDIR": str(d)}),
            stdout=(d / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
    traces = {party: TraceFiles(pid=proc.pid) for party, proc in procs.items()}
    from psi_builtin import watch

    outcome = watch(procs, timeout)
    for trace in traces.values():
        trace.cleanup()  # libpsi's /tmp/psi_*.trace of these two processes
    failed = [party for party, proc in procs.items() if proc.returncode != 0]
    if failed:
        tails = {p: (work / p / "stdout.log").read_text()[-1500:] for p in PARTIES}
        raise RuntimeError(f"bare {', '.join(failed)} failed: {tails}")
    results = {p: json.loads((work / p / "result.json").read_text()) for p in PARTIES}
    # the clock stops when both exchanged their final message (see bare_party), not at process exit
    wall = max(r["end"] for r in results.values()) - outcome["started"]
    run = Run("bare", "pinned" if pinned else "free", wall)
    for party in PARTIES:
        result = results[party]
        run.parties[party] = _party(outcome["trees"][party], result["psi_s"], result["link_s"])
    run.extra["outputs"] = {p: work / p / "output.csv" for p in PARTIES}
    return run


def _party(tree: Any, psi_s: float | None, link_s: float | None = None) -> dict[str, Any]:
    return {
        "rss_mb": tree.peak_rss / 2**20,
        "cpu_s": sum(tree.cpu.values()),
        "psi_s": psi_s,
        "link_s": link_s,
    }


def engine_env(
    party: str, config: dict[str, Any], work: Path, *, ports: dict[str, int] | None, egress: str
) -> dict[str, str]:
    """The engine contract; with `ports`, each party's `spu` endpoint for a direct link."""
    cluster = {
        "parties": [
            {
                "name": p,
                "role": "",
                "services": [{"portName": "spu", "endpoints": [f"127.0.0.1:{ports[p]}"]}] if ports else [],
            }
            for p in PARTIES
        ],
        "selfPartyIdx": PARTIES.index(party),
        "selfEndpointIdx": 0,
    }
    allocated = {"ports": [{"name": "spu", "port": ports[party]}]} if ports else {"ports": []}
    env = {
        "TASK_ID": TASK,
        "TASK_INPUT_CONFIG": json.dumps(config),
        "TASK_CLUSTER_DEFINE": json.dumps(cluster),
        "ALLOCATED_PORTS": json.dumps(allocated),
        "KUSCIA_DOMAIN_ID": party,
        "ACCORD_WORK_DIR": str(work),
        "PYTHONUNBUFFERED": "1",
    }
    if egress:
        env["ACCORD_EGRESS"] = egress
    return clean_env(env)


def run_engine(
    spu: Path,
    data: Path,
    work: Path,
    pinned: bool,
    timeout: float,
    *,
    egress: dict[str, str] | None,
    gateway_pids: dict[str, int] | None = None,
) -> Run:
    config = {
        "engine": "spu",
        "protocol": "RR22",
        "inputs": {p: {"path": str(data / f"{p}.csv"), "keys": ["id"]} for p in PARTIES},
        "receivers": list(PARTIES),
        "peer_wait_s": 120,
        "peer_timeout_s": 600,
    }
    ports = None if egress else {p: free_port() for p in PARTIES}
    procs = {}
    for index, party in enumerate(PARTIES):
        d = work / party
        d.mkdir(parents=True)
        env = engine_env(party, config, d, ports=ports, egress=(egress or {}).get(party, ""))
        procs[party] = subprocess.Popen(
            pin([str(spu), "-m", "accord.engines.spu_psi"], pinned, index),
            cwd=d,
            env=env,
            stdout=(d / "stdout.log").open("wb"),
            stderr=(d / "stderr.log").open("wb"),
        )
    from psi_builtin import watch

    outcome = watch(procs, timeout, gateway_pids)
    failed = [party for party, proc in procs.items() if proc.returncode != 0]
    if failed:
        reasons = {p: (work / p / "stderr.log").read_text().strip().splitlines()[-1:] for p in PARTIES}
        raise RuntimeError(f"engine {', '.join(failed)} failed: {reasons}")
    mode = "gateway" if egress else "engine"
    run = Run(mode, "pinned" if pinned else "free", outcome["wall_s"])
    for party in PARTIES:
        result = json.loads((work / party / "result.json").read_text())
        run.parties[party] = _party(
            outcome["trees"][party], result["timings"]["psi_s"], result["timings"]["link_s"]
        )
        run.parties[party]["timings"] = result["timings"]
    for name, tree in outcome["others"].items():
        run.extra[f"{name} RSS MB / CPU s"] = f"{tree.peak_rss / 2**20:.0f} / {sum(tree.cpu.values()):.1f}"
    run.extra["outputs"] = {p: work / p / "output.csv" for p in PARTIES}
    return run


class Gateways:
    """Two gateway processes (alice, bob) that pin each other, route to each other, and know the session."""

    def __init__(self, work: Path, pinned: bool) -> None:
        from accord.kms.identity import generate_identity

        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        ports = {p: (free_port(), free_port()) for p in PARTIES}
        self.egress = {p: f"http://127.0.0.1:{ports[p][1]}" for p in PARTIES}
        for p in PARTIES:
            d = work / f"gw-{p}"
            d.mkdir(parents=True)
            key, cert = generate_identity(p)
            (d / "domain.key").write_bytes(key)
            (d / "domain.crt").write_bytes(cert)
        for index, p in enumerate(PARTIES):
            peer = PARTIES[1 - index]
            config = {
                "domain": p,
                "dir": str(work / f"gw-{p}"),
                "public_port": ports[p][0],
                "egress_port": ports[p][1],
                "peers": {peer: str(work / f"gw-{peer}" / "domain.crt")},
                "routes": [{"to": peer, "endpoint": f"https://127.0.0.1:{ports[peer][0]}"}],
                "sessions": [{"id": TASK, "parties": list(PARTIES)}],
            }
            (work / f"gw-{p}.json").write_text(json.dumps(config))
            command = [
                sys.executable,
                "-m",
                "accord.gateway.standalone",
                "--config",
                str(work / f"gw-{p}.json"),
            ]
            proc = subprocess.Popen(
                pin(command, pinned, index),
                stdout=subprocess.PIPE,
                stderr=(work / f"gw-{p}.log").open("wb"),
                env=clean_env({}),
            )
            self.procs[p] = proc
        for p, proc in self.procs.items():
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith(b"READY"):
                self.close()
                raise SystemExit(f"gateway {p} did not start: {(work / f'gw-{p}.log').read_text()[-2000:]}")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_nodes(spu: Path, data: Path, work: Path, pinned: bool, timeout: float, expected: int) -> Run:
    sys.path.insert(0, str(ROOT))
    from tests.nodes import NodeProcess, connect, one_task_job

    from accord.client.data import add_data
    from accord.client.jobs import submit_job
    from psi_builtin import Tree, check_outputs, process_parents

    nodes = {p: NodeProcess(work / p, p) for p in PARTIES}
    try:
        for node in nodes.values():
            node.start(wait=False)
        for node in nodes.values():
            node.wait_ready()
        connect(*nodes.values())
        for index, (p, node) in enumerate(nodes.items()):
            image = node.client.get("AppImage", "spu-psi")
            if image["spec"]["command"][0] != str(spu):
                image["spec"]["command"][0] = str(spu)
                node.client.replace(image)
            add_data(node.client, f"{p}-table", data / f"{p}.csv", link=True, column_types={"id": "str"})
            if pinned:
                assert node.proc is not None
                os.sched_setaffinity(node.proc.pid, {index})
        config = {
            "engine": "spu",
            "protocol": "RR22",
            "receivers": list(PARTIES),
            "peer_timeout_s": 600,
            "inputs": {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES},
        }
        name = f"spu{int(time.time())}"
        job = one_task_job(name, PARTIES, config, app="spu-psi", alias="psi")
        trees = {p: Tree(node.proc.pid) for p, node in nodes.items() if node.proc is not None}
        engines: dict[str, Any] = {}
        started, submitted_at = time.monotonic(), time.time()
        submit_job(nodes["alice"].client, job)
        phase, last_poll = "", 0.0
        while True:
            now = time.monotonic()
            if now - started > timeout:
                raise SystemExit("nodes run timed out")
            parents = process_parents()
            for tree in trees.values():
                tree.sample(parents)
            for p, node in nodes.items():
                if p not in engines:
                    guard = _engine_guard(node.settings.tasks_dir / f"{name}-psi", parents)
                    if guard is not None:
                        engines[p] = Tree(guard)
                if p in engines:
                    engines[p].sample(parents)
            # The job's own completion time is the end of the clock, so polling less often (which
            # costs the nodes CPU that their engines would otherwise have) loses no precision.
            if now - last_poll > 0.5:
                last_poll = now
                status = nodes["alice"].client.get("Job", name)["status"]
                phase = status["phase"]
                if phase in ("Succeeded", "Failed", "Cancelled"):
                    break
            time.sleep(0.05)
        completed = status.get("completion_time")
        if completed:
            wall = datetime.fromisoformat(completed).timestamp() - submitted_at
        else:
            wall = time.monotonic() - started
        if phase != "Succeeded":
            raise SystemExit(f"nodes job ended {phase}: {status}")
        run = Run("nodes", "pinned" if pinned else "free", wall)
        outputs = {}
        for p, node in nodes.items():
            result = json.loads((node.settings.tasks_dir / f"{name}-psi" / "result.json").read_text())
            run.parties[p] = _party(trees[p], result["timings"]["psi_s"], result["timings"]["link_s"])
            run.parties[p]["timings"] = result["timings"]
            if p in engines:
                run.extra[f"{p} engine alone: peak RSS MB"] = f"{engines[p].peak_rss / 2**20:.0f}"
            doc = node.client.get("DomainData", f"{name}-psi-output")
            outputs[p] = node.settings.data_dir / doc["spec"]["relative_uri"]
        check_outputs(outputs, data, expected)
        return run
    finally:
        for node in nodes.values():
            try:
                node.stop()
            except AssertionError:
                node.kill()


def _engine_guard(work_dir: Path, parents: dict[int, int]) -> int | None:
    """The pid of the SPU engine's guard process running in `work_dir` (its parent is no engine)."""
    found = []
    for pid in parents:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"accord.engines.spu_psi" in cmdline and Path(cwd) == work_dir:
            found.append(pid)
    roots = [pid for pid in found if parents.get(pid) not in found]
    return roots[0] if roots else None


def run_builtin(data: Path, work: Path, pinned: bool, timeout: float, expected: int) -> Run:
    from psi_builtin import check, run

    outcome = run(data, work, pinned=pinned, workers=None, timeout=timeout)
    check(work, data, expected)
    result = Run("builtin", "pinned" if pinned else "free", float(outcome["wall_s"]))  # type: ignore[arg-type]
    for p in PARTIES:
        tree = outcome["trees"][p]  # type: ignore[index]
        result.parties[p] = _party(tree, None)
    return result


def slowest_psi(run: Run) -> float | None:
    values = [info["psi_s"] for info in run.parties.values() if info.get("psi_s") is not None]
    return max(values) if values else None


def ratios(run: Run, runs: list[Run]) -> tuple[float | None, float | None]:
    """Wall and libpsi-time ratios against bare's run of the same pinning and repetition."""
    bare = next(
        (r for r in runs if r.mode == "bare" and (r.pinning, r.attempt) == (run.pinning, run.attempt)), None
    )
    if bare is None:
        return None, None
    psi, bare_psi = slowest_psi(run), slowest_psi(bare)
    return run.wall_s / bare.wall_s, (psi / bare_psi if psi and bare_psi else None)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_runs(runs: list[Run]) -> None:
    """Every run (ratios against bare's run of the same pinning and repetition), then medians."""
    header = (
        f"{'mode':<8} {'pinning':<7} {'#':>1} {'wall s':>7} {'ratio':>5} {'psi ratio':>9} | {'party':<6} "
        f"{'peak RSS MB':>11} {'CPU s':>6} {'link s':>6} {'psi s':>6}  read/link/psi/output s"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        ratio, psi_ratio = ratios(run, runs)
        for i, party in enumerate(PARTIES):
            info = run.parties[party]
            lead = (
                f"{run.mode:<8} {run.pinning:<7} {run.attempt:>1} {run.wall_s:>7.2f} {_fmt(ratio):>5} "
                f"{_fmt(psi_ratio):>9}"
                if i == 0
                else " " * 43
            )
            timings = info.get("timings")
            keys = ("read_s", "link_s", "psi_s", "output_s")
            detail = "/".join(f"{timings.get(k, 0):.2f}" for k in keys) if timings else ""
            rss, cpu = info["rss_mb"], info["cpu_s"]
            print(
                f"{lead} | {party:<6} {rss:>11.0f} {cpu:>6.1f} {_fmt(info.get('link_s')):>6} "
                f"{_fmt(info.get('psi_s')):>6}  {detail}"
            )
        for key, value in run.extra.items():
            if key != "outputs":
                print(f"{'':43} | {key}: {value}")
    print()
    columns = f"{'median':<8} {'pinning':<7} {'runs':>4} {'wall s':>7} {'ratio':>5} {'psi ratio':>9}"
    print(f"{columns} | max peak RSS MB per party")
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.pinning), []).append(run)
    for (mode, pinning), group in groups.items():
        walls = [r.wall_s for r in group]
        pairs = [ratios(r, runs) for r in group]
        wall_ratios = [p[0] for p in pairs if p[0] is not None]
        psi_ratios = [p[1] for p in pairs if p[1] is not None]
        rss = {p: max(r.parties[p]["rss_mb"] for r in group) for p in PARTIES}
        print(
            f"{mode:<8} {pinning:<7} {len(group):>4} {statistics.median(walls):>7.2f} "
            f"{_fmt(statistics.median(wall_ratios) if wall_ratios else None):>5} "
            f"{_fmt(statistics.median(psi_ratios) if psi_ratios else None):>9} | "
            + ", ".join(f"{p} {v:.0f}" for p, v in rss.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default="bare,engine,gateway,nodes,builtin")
    parser.add_argument("--pinning", default="free,pinned")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each mode N times (builtin once); medians are printed"
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    # child roles
    parser.add_argument("--role", choices=["bare-party"], help=argparse.SUPPRESS)
    for name in ("rank", "ports", "input", "output", "result"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bare-party":
        args.rank = int(args.rank)
        bare_party(args)
        return

    from accord.runtimes.engines import install_engine
    from psi_builtin import generate

    spu = install_engine("spu", say=lambda line: print(f"[spu] {line}", file=sys.stderr)).python
    root = Path(tempfile.mkdtemp(prefix="psi-bench-"))
    runs: list[Run] = []
    try:
        data = root / "data"
        data.mkdir()
        t0 = time.monotonic()
        shared = generate(data, args.rows, args.overlap, args.seed)
        print(f"generated 2 x {args.rows} rows, {shared} shared, in {time.monotonic() - t0:.1f} s ({root})")
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f}; SPU venv {spu.parent.parent}")
        failures: list[str] = []
        for pinning in args.pinning.split(","):
            pinned = pinning == "pinned"
            for attempt in range(args.repeat):
                for mode in args.modes.split(","):
                    if mode == "builtin" and attempt > 0:
                        continue  # ~100 s a run and compared with nothing: once per pinning
                    work = root / f"{mode}-{pinning}-{attempt}"
                    work.mkdir()
                    load = os.getloadavg()[0]
                    print(f"... {mode} {pinning} (load {load:.2f})", file=sys.stderr, flush=True)
                    try:
                        run = run_mode(mode, spu, data, work, pinned, args.timeout, shared)
                    except (RuntimeError, SystemExit) as exc:
                        failures.append(f"{mode} {pinning}: {exc}")
                        print(f"FAILED {mode} {pinning}: {exc}", file=sys.stderr, flush=True)
                        continue
                    if isinstance(run, str):
                        print(f"{mode}: skipped: {run}")
                        continue
                    run.attempt = attempt
                    runs.append(run)
        print()
        print_runs(runs)
        for failure in failures:
            print(f"FAILED {failure[:600]}")
        load = os.getloadavg()[0]
        print(f"load average at the end {load:.2f}; every run listed is correct and aligned ({shared} rows)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def run_mode(
    mode: str, spu: Path, data: Path, work: Path, pinned: bool, timeout: float, shared: int
) -> Run | str:
    """One run of `mode`, checked against the Python intersection; a string says why it was skipped."""
    if mode == "bare":
        run = run_bare(spu, data, work, pinned, timeout)
    elif mode == "engine":
        run = run_engine(spu, data, work, pinned, timeout, egress=None)
    elif mode == "gateway":
        gateways = Gateways(work, pinned)
        try:
            pids = {f"gateway {p}": proc.pid for p, proc in gateways.procs.items()}
            run = run_engine(spu, data, work, pinned, timeout, egress=gateways.egress, gateway_pids=pids)
        finally:
            gateways.close()
    elif mode == "nodes":
        return run_nodes(spu, data, work, pinned, timeout, shared)
    elif mode == "builtin":
        return run_builtin(data, work, pinned, timeout, shared)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from psi_builtin import check_outputs

    check_outputs(run.extra["outputs"], data, shared)
    return run


if __name__ == "__main__":
    main()
