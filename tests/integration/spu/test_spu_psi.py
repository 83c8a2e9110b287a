"""The SPU PSI engine for real: SPU's own venv, two engine processes, two real gateways' PTP transport.

Every run is checked against a plain Python set intersection, and for row alignment when both parties
receive.  The engines reach each other only through their gateways' egress ports in yacl's blackbox
mode (they listen on nothing); the session is the task id, registered at both gateways as a running
task registers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import subprocess
from pathlib import Path

import pytest

from accord.datamesh.wire import TaskGrant
from accord.engines.dataio import DataMeshClient
from accord.resources.data import DomainData
from tests.integration.datamesh_node import Node, datamesh_node
from tests.integration.gateway.harness import GatewayNode
from tests.integration.spu.pair import (
    PARTIES,
    TASK,
    Pair,
    make_tables,
    psi_config,
    same_config,
    write_table,
)

pytestmark = pytest.mark.slow


def traces() -> set[str]:
    return set(glob.glob("/tmp/psi_*.trace"))


def ids(rows: list[dict[str, str]], column: str = "id") -> list[str]:
    return [row[column] for row in rows]


@pytest.mark.parametrize("protocol", ["RR22", "ECDH"])
async def test_both_receivers_get_the_aligned_intersection(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path, protocol: str
) -> None:
    paths, expected = make_tables(tmp_path / "data", rows=3000)
    before = traces()
    pair = Pair(spu_python, tmp_path / "run", ptp_pair)
    outcomes = await pair.run(same_config(psi_config(paths, protocol=protocol, receivers=list(PARTIES))))
    for outcome in outcomes.values():
        assert outcome.returncode == 0, outcome.stderr[-2000:]
        assert outcome.result is not None
        assert outcome.result["link"] == "blackbox" and outcome.result["intersection_rows"] == len(expected)
    alice, bob = outcomes["alice"].rows(), outcomes["bob"].rows()
    assert ids(alice) == ids(bob)  # row i is the same key at both parties
    assert set(ids(alice)) == expected and len(alice) == len(expected)
    assert set(alice[0]) == {"id", "age"} and set(bob[0]) == {"id", "score"}
    assert {"a,b", 'q"uote', "two\nlines", "", " spaced ", "%2C", "ünï"} & expected == {
        "two\nlines",
        "",
        " spaced ",
        "%2C",
        "ünï",
    }
    # nothing private is left behind: libpsi's scratch dir, its input file, its trace files
    for outcome in outcomes.values():
        assert not (outcome.work / ".spu-psi").exists()
    assert traces() <= before
    # everything went through the gateways' PTP queues; yacl's last ACKs may still sit there when an
    # engine exits mid-poll (the transport puts back what it could not deliver, it never drops it), and
    # they go with the session, as when a node ends the task
    for node in ptp_pair.values():
        assert node.gateway.ptp.hub.total <= 4096, node.gateway.ptp.hub.total
        node.registry.unregister_session(TASK)
        assert node.gateway.ptp.hub.total == 0


async def test_one_receiver(spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path) -> None:
    paths, expected = make_tables(tmp_path / "data", rows=1000, special=False)
    pair = Pair(spu_python, tmp_path / "run", ptp_pair)
    outcomes = await pair.run(same_config(psi_config(paths, protocol="ECDH", receivers=["bob"])))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    assert not (outcomes["alice"].work / "output.csv").exists()
    assert outcomes["alice"].result is not None and outcomes["alice"].result["output"] is None
    assert set(ids(outcomes["bob"].rows())) == expected


async def test_left_join_and_two_key_columns_named_differently(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    alice_rows = [[f"u{i}", str(i % 3), f"a{i}"] for i in range(40)] + [["", "0", "blank"]]
    bob_rows = [[f"u{i}", str(i % 3), f"b{i}"] for i in range(20, 60)] + [["", "0", "blank"]]
    paths = {
        "alice": write_table(data / "alice.csv", ["id", "day", "a"], alice_rows),
        "bob": write_table(data / "bob.csv", ["uid", "d", "b"], bob_rows),
    }
    config = psi_config(paths, join="left", receivers=list(PARTIES))
    config["inputs"]["alice"]["keys"] = ["id", "day"]
    config["inputs"]["bob"]["keys"] = ["uid", "d"]
    pair = Pair(spu_python, tmp_path / "run", ptp_pair)
    outcomes = await pair.run(same_config(config))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    alice, bob = outcomes["alice"].rows(), outcomes["bob"].rows()
    truth = {(r[0], r[1]) for r in alice_rows} & {(r[0], r[1]) for r in bob_rows}
    assert len(truth) == 21
    matched_a = [r for r in alice if r["_psi_matched"] == "true"]
    matched_b = [r for r in bob if r["_psi_matched"] == "true"]
    assert [(r["id"], r["day"]) for r in matched_a] == [(r["uid"], r["d"]) for r in matched_b]
    assert {(r["id"], r["day"]) for r in matched_a} == truth
    # left: every own row once, matched first, then the rest in input order
    assert len(alice) == len(alice_rows) and len(bob) == len(bob_rows)
    rest = [r["a"] for r in alice[len(matched_a) :]]
    assert rest == [r[2] for r in alice_rows if (r[0], r[1]) not in truth]


async def test_duplicates_keep_all_is_the_aligned_join_and_keep_first_drops(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    paths = {
        "alice": write_table(
            data / "alice.csv", ["id", "v"], [["k1", "1"], ["k2", "2"], ["k2", "3"], ["x", "4"]]
        ),
        "bob": write_table(
            data / "bob.csv", ["id", "w"], [["k2", "5"], ["k1", "6"], ["k1", "7"], ["y", "8"]]
        ),
    }
    pair = Pair(spu_python, tmp_path / "all", ptp_pair)
    outcomes = await pair.run(same_config(psi_config(paths, duplicates="keep-all", receivers=list(PARTIES))))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    alice, bob = outcomes["alice"].rows(), outcomes["bob"].rows()
    assert ids(alice) == ids(bob)
    pairs = sorted((a["v"], b["w"]) for a, b in zip(alice, bob, strict=True))
    assert pairs == [("1", "6"), ("1", "7"), ("2", "5"), ("3", "5")]  # the SQL join, row by row

    pair = Pair(spu_python, tmp_path / "first", ptp_pair, task="job-1-first")
    outcomes = await pair.run(same_config(psi_config(paths, duplicates="keep-first")))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    alice, bob = outcomes["alice"].rows(), outcomes["bob"].rows()
    assert sorted((a["v"], b["w"]) for a, b in zip(alice, bob, strict=True)) == [("1", "6"), ("2", "5")]
    assert outcomes["alice"].result is not None and outcomes["alice"].result["rows_dropped_duplicates"] == 1

    pair = Pair(spu_python, tmp_path / "one", ptp_pair, task="job-1-one")
    outcomes = await pair.run(same_config(psi_config(paths, duplicates="keep-all", receivers=["alice"])))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    assert sorted(r["v"] for r in outcomes["alice"].rows()) == ["1", "2", "3"]  # each own row once


async def test_duplicates_refused_before_any_psi_and_the_peer_is_told(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    paths = {
        "alice": write_table(data / "alice.csv", ["id"], [["k1"], ["k1"], ["k2"]]),
        "bob": write_table(data / "bob.csv", ["id"], [["k1"], ["k3"]]),
    }
    outcomes = await Pair(spu_python, tmp_path / "run", ptp_pair).run(same_config(psi_config(paths)))
    alice, bob = outcomes["alice"], outcomes["bob"]
    assert alice.returncode == 3 and "inputs.alice.keys: 1 of 3 rows repeat a key" in alice.reason
    assert "k1" not in alice.reason  # never a key value in a reason the peer may see
    assert bob.returncode == 4 and "alice failed (input error)" in bob.reason
    assert not (alice.work / "output.csv").exists() and not (bob.work / "output.csv").exists()


async def test_missing_key_column_fails_naming_party_and_column(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    paths, _ = make_tables(tmp_path / "data", rows=50, special=False)
    config = psi_config(paths)
    config["inputs"]["bob"]["keys"] = ["uid"]
    outcomes = await Pair(spu_python, tmp_path / "run", ptp_pair).run(same_config(config))
    assert outcomes["bob"].returncode == 3
    assert "inputs.bob.keys: column 'uid' not found" in outcomes["bob"].reason
    assert outcomes["alice"].returncode == 4 and "bob failed (input error)" in outcomes["alice"].reason


async def test_empty_input_and_empty_intersection(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    paths = {
        "alice": write_table(data / "alice.csv", ["id", "v"], []),
        "bob": write_table(data / "bob.csv", ["id", "w"], [["k1", "1"]]),
    }
    outcomes = await Pair(spu_python, tmp_path / "empty", ptp_pair).run(
        same_config(psi_config(paths, receivers=list(PARTIES)))
    )
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    assert outcomes["alice"].rows() == [] and outcomes["bob"].rows() == []
    assert (outcomes["bob"].work / "output.csv").read_text().splitlines()[0] == '"id","w"'

    paths["alice"] = write_table(data / "alice2.csv", ["id", "v"], [["k2", "2"], ["k3", "3"]])
    outcomes = await Pair(spu_python, tmp_path / "disjoint", ptp_pair, task="job-1-disjoint").run(
        same_config(psi_config(paths, receivers=list(PARTIES)))
    )
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]
    assert outcomes["alice"].rows() == [] and outcomes["bob"].rows() == []


async def test_different_configs_never_start_the_psi(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    paths, _ = make_tables(tmp_path / "data", rows=50, special=False)
    configs = {"alice": psi_config(paths, protocol="RR22"), "bob": psi_config(paths, protocol="ECDH")}
    outcomes = await Pair(spu_python, tmp_path / "run", ptp_pair).run(configs)
    for party, peer in (("alice", "bob"), ("bob", "alice")):
        assert outcomes[party].returncode == 4
        assert f"{peer} runs a different psi config" in outcomes[party].reason


async def test_a_party_killed_mid_psi_fails_its_peer_and_leaves_no_output(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    paths, _ = make_tables(tmp_path / "data", rows=150_000, special=False)
    config = psi_config(paths, protocol="ECDH", receivers=list(PARTIES), peer_wait_s=5, peer_timeout_s=5)
    pair = Pair(spu_python, tmp_path / "run", ptp_pair)
    before = traces()
    await pair.start(same_config(config))
    await pair.wait_for_line("bob", "linked with alice")
    await asyncio.sleep(0.5)
    pair.kill("bob")
    outcomes = await pair.finish()
    alice = outcomes["alice"]
    assert alice.returncode == 4, alice.stderr[-2000:]
    # libpsi's ECDH receives in a native thread: a dead link aborts the party process, and the guard
    # turns that into the one-line reason (RR22 raises instead: "bob stopped answering during the PSI")
    assert alice.reason.startswith("spu-psi: peer error:") and "bob" in alice.reason, alice.reason
    assert not (alice.work / "output.csv").exists() and alice.result is None
    assert not (alice.work / ".spu-psi").exists()
    assert len(traces() - before) <= 1  # at most killed bob's; alice's was removed

    # a rerun with both parties succeeds
    rerun = Pair(spu_python, tmp_path / "rerun", ptp_pair, task="job-1-rerun")
    outcomes = await rerun.run(same_config({**config, "peer_wait_s": 60, "peer_timeout_s": 60}))
    assert [o.returncode for o in outcomes.values()] == [0, 0], outcomes["alice"].stderr[-2000:]


def test_spu_natives_load_without_jax(spu_python: Path) -> None:
    """The engine needs libspu and libpsi only; `import spu` would also import jax (0.2-0.45 s, ~100 MB)."""
    check = (
        "import sys\n"
        "from accord.engines.spu_psi import native\n"
        "natives = native.load()\n"
        "assert callable(natives.libpsi.psi_execute) and natives.libspu.link.Desc() is not None\n"
        "assert natives.libpsi.PsiProtocol.PROTOCOL_RR22 is not None\n"
        "assert 'jax' not in sys.modules and 'spu' not in sys.modules, sorted(sys.modules)\n"
        "assert native.load() is natives\n"
    )
    done = subprocess.run([str(spu_python), "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


async def test_without_a_transport_it_is_a_config_error(spu_python: Path, tmp_path: Path) -> None:
    paths, _ = make_tables(tmp_path / "data", rows=10, special=False)
    pair = Pair(spu_python, tmp_path / "run", None)
    await pair.start(same_config(psi_config(paths)), parties=["alice"])
    outcome = (await pair.finish())["alice"]
    assert outcome.returncode == 2 and "ACCORD_EGRESS is not set" in outcome.reason


async def test_session_not_registered_at_the_peer_fails_clearly(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    """The gateway binds the PTP session to a running task: without it at bob, alice cannot reach bob."""
    paths, _ = make_tables(tmp_path / "data", rows=10, special=False)
    ptp_pair["alice"].registry.register_session(TASK, parties=set(PARTIES), task=TASK)
    pair = Pair(spu_python, tmp_path / "run", {"alice": ptp_pair["alice"]})
    await pair.start(same_config(psi_config(paths, peer_wait_s=3, peer_timeout_s=3)), parties=["alice"])
    outcome = (await pair.finish())["alice"]
    assert outcome.returncode == 4, outcome.stderr[-2000:]
    assert "bob's side refused PTP session 'job-1-psi': E0000000404 no running task" in outcome.reason


async def test_sigterm_stops_both_promptly_without_output(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    """What the runtime does to a cancelled task: SIGTERM to each party's process group."""
    paths, _ = make_tables(tmp_path / "data", rows=150_000, special=False)
    config = psi_config(paths, protocol="ECDH", receivers=list(PARTIES))
    pair = Pair(spu_python, tmp_path / "run", ptp_pair)
    await pair.start(same_config(config))
    await pair.wait_for_line("alice", "linked with bob")
    for proc in pair.procs.values():
        os.killpg(proc.pid, signal.SIGTERM)
    outcomes = await pair.finish(timeout=60)
    summary = {p: (o.returncode, o.reason) for p, o in outcomes.items()}
    # Both get SIGTERM at once; on a loaded machine one of them may see its peer gone before its own
    # signal is handled, and then fails as "peer" (exit 4) naming it -- also a prompt, clean stop.
    terminated = [p for p, o in outcomes.items() if o.returncode == 143]
    assert terminated, summary
    for party, outcome in outcomes.items():
        if outcome.returncode == 143:
            assert outcome.reason == "spu-psi: terminated: stopped by signal SIGTERM", summary
        else:
            peer = "bob" if party == "alice" else "alice"
            assert outcome.returncode == 4 and peer in outcome.reason, (summary, outcome.stdout[-3000:])
        assert not (outcome.work / "output.csv").exists() and not (outcome.work / ".spu-psi").exists()


# -- under a node: input from and output to DataMesh ----------------------------------------------------


async def test_under_a_node_data_comes_from_and_goes_to_datamesh(
    spu_python: Path, ptp_pair: dict[str, GatewayNode], tmp_path: Path
) -> None:
    paths, expected = make_tables(tmp_path / "data", rows=2000, special=False)
    async with contextlib.AsyncExitStack() as stack:
        meshes: dict[str, Node] = {}
        for party in PARTIES:
            tables = {f"{party}-table": paths[party]}
            meshes[party] = await stack.enter_async_context(datamesh_node(tmp_path, party, tables))
            meshes[party].tokens[f"tok-{party}"] = TaskGrant(
                task=TASK, job="job-1", domain=party, inputs={f"{party}-table"}, outputs_allowed=True
            )
        config = psi_config(paths, receivers=list(PARTIES))
        config["inputs"] = {p: {"data": f"{p}-table", "keys": ["id"]} for p in PARTIES}
        extra = {
            p: {"ACCORD_DATAMESH": meshes[p].service.location, "ACCORD_TASK_TOKEN": f"tok-{p}"}
            for p in PARTIES
        }
        outcomes = await Pair(spu_python, tmp_path / "run", ptp_pair).run(same_config(config), extra)
        for outcome in outcomes.values():
            assert outcome.returncode == 0, outcome.stderr[-2000:]
            assert outcome.result is not None and outcome.result["output"] == f"{TASK}-output"
            assert not (outcome.work / "output.csv").exists()
        columns = {}
        for party in PARTIES:
            service, store, tokens = meshes[party].service, meshes[party].store, meshes[party].tokens
            data = await store.get("DomainData", f"{TASK}-output")
            assert isinstance(data, DomainData)
            assert data.spec.lineage.model_dump() == {
                "inputs": [f"{party}-table"],
                "task": TASK,
                "job": "job-1",
            }
            tokens["reader"] = TaskGrant(task="next", domain=party, inputs={f"{TASK}-output"})
            client = DataMeshClient(service.location, "reader")
            table = await asyncio.to_thread(client.read_all, f"{TASK}-output")
            client.close()
            columns[party] = table.column("id").to_pylist()
        assert columns["alice"] == columns["bob"] and set(columns["alice"]) == expected
