"""Both PSI parties in one test process (two threads, real HTTP on loopback), checked against sets.

Each party runs the real `run_task` with its own engine contract; only the process boundary is missing
(the integration tests have it).  Masking runs in-thread (`workers: 0`) to keep these fast.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accord.engines.psi.config import MATCH_COLUMN
from accord.engines.psi.engine import run_task
from accord.engines.psi.errors import InputError, PeerError, ProtocolMismatch, PsiError
from accord.engines.sdk import ClusterDefine, ClusterParty, Port, Service, TaskContext

PARTIES = ("alice", "bob")
Rows = list[dict[str, str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_csv(path: Path, columns: list[str], rows: Rows) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def read_csv(path: Path) -> Rows:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def context(
    task_id: str, party: str, ports: dict[str, int], config: dict[str, Any], work: Path
) -> TaskContext:
    cluster = ClusterDefine(
        parties=[
            ClusterParty(
                name=p, role="", services=[Service(port_name="psi", endpoints=[f"127.0.0.1:{ports[p]}"])]
            )
            for p in PARTIES
        ],
        self_party_idx=PARTIES.index(party),
    )
    return TaskContext(
        task_id=task_id,
        domain_id=party,
        input_config=json.dumps(config),
        cluster=cluster,
        ports={"psi": Port(name="psi", port=ports[party])},
        work_dir=work,
    )


def run_pair(
    tmp_path: Path,
    inputs: dict[str, dict[str, Any]],
    configs: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run both parties; returns each party's result dict or the exception it raised."""
    base: dict[str, Any] = {
        "protocol": "ECDH",
        "engine": "builtin",
        "inputs": inputs,
        "workers": 0,
        "peer_wait_s": 5,
        "peer_timeout_s": 5,
        "timeout_s": 60,
        **options,
    }
    ports = {p: free_port() for p in PARTIES}
    outcome: dict[str, Any] = {}

    def party_main(party: str) -> None:
        work = tmp_path / party
        work.mkdir(exist_ok=True)
        doc = {**base, **(configs or {}).get(party, {})}
        try:
            outcome[party] = run_task(context("task-1", party, ports, doc, work), {})
        except PsiError as exc:
            outcome[party] = exc

    threads = [threading.Thread(target=party_main, args=(p,)) for p in PARTIES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return outcome


def output(tmp_path: Path, party: str) -> Rows:
    return read_csv(tmp_path / party / "output.csv")


def random_tables(seed: int, n_alice: int, n_bob: int, universe: int) -> tuple[Rows, Rows]:
    rng = random.Random(seed)
    alice_ids = rng.sample(range(universe), n_alice)
    bob_ids = rng.sample(range(universe), n_bob)
    alice = [{"id": f"u{i:06d}", "age": str(rng.randint(18, 90))} for i in alice_ids]
    bob = [{"uid": f"u{i:06d}", "score": f"{rng.random():.3f}"} for i in bob_ids]
    return alice, bob


def two_inputs(
    tmp_path: Path, alice: Rows, bob: Rows, alice_keys: list[str], bob_keys: list[str]
) -> dict[str, Any]:
    alice_cols = list(alice[0]) if alice else ["id", "age"]
    bob_cols = list(bob[0]) if bob else ["uid", "score"]
    return {
        "alice": {"path": write_csv(tmp_path / "alice.csv", alice_cols, alice), "keys": alice_keys},
        "bob": {"path": write_csv(tmp_path / "bob.csv", bob_cols, bob), "keys": bob_keys},
    }


def test_inner_join_equals_set_intersection_and_outputs_align(tmp_path: Path) -> None:
    alice, bob = random_tables(seed=7, n_alice=400, n_bob=300, universe=800)
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]))
    expected = {r["id"] for r in alice} & {r["uid"] for r in bob}
    out_a, out_b = output(tmp_path, "alice"), output(tmp_path, "bob")
    assert {r["id"] for r in out_a} == expected and len(out_a) == len(expected)
    assert [r["id"] for r in out_a] == [r["uid"] for r in out_b]  # same order at both
    assert list(out_a[0]) == ["id", "age"] and list(out_b[0]) == ["uid", "score"]  # own columns only
    by_id = {r["id"]: r for r in alice}
    assert all(by_id[r["id"]] == r for r in out_a)  # rows copied through unchanged
    for party in PARTIES:
        summary = result[party]
        assert summary["intersection_keys"] == summary["intersection_rows"] == len(expected)
        assert json.loads((tmp_path / party / "result.json").read_text()) == summary
    assert result["alice"]["rows"] == 400 and result["alice"]["peer_unique_keys"] == 300


def test_multi_column_keys_with_different_names(tmp_path: Path) -> None:
    rng = random.Random(11)
    pairs = [(f"f{rng.randint(0, 20)}", f"l{rng.randint(0, 20)}") for _ in range(600)]
    alice_keys = list(dict.fromkeys(pairs[:300]))
    bob_keys = list(dict.fromkeys(pairs[200:]))
    alice = [{"first": f, "last": la, "n": str(i)} for i, (f, la) in enumerate(alice_keys)]
    bob = [{"given": f, "family": la} for f, la in bob_keys]
    # a pair that only matches if the columns were concatenated without separation
    alice.append({"first": "ab", "last": "c", "n": "x"})
    bob.append({"given": "a", "family": "bc"})
    run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["first", "last"], ["given", "family"]))
    expected = set(alice_keys) & set(bob_keys)
    out_a, out_b = output(tmp_path, "alice"), output(tmp_path, "bob")
    assert [(r["first"], r["last"]) for r in out_a] == [(r["given"], r["family"]) for r in out_b]
    assert {(r["first"], r["last"]) for r in out_a} == expected
    assert len(out_a) == len(expected)


def test_duplicates_error_fails_before_the_exchange(tmp_path: Path) -> None:
    alice = [{"id": "a", "age": "1"}, {"id": "b", "age": "2"}, {"id": "a", "age": "3"}]
    bob = [{"uid": "a", "score": "1"}]
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]))
    assert isinstance(result["alice"], InputError)
    assert "inputs.alice.keys: 1 of 3 rows repeat a key" in str(result["alice"])
    assert "'a'" not in str(result["alice"])  # never the key value itself
    assert isinstance(result["bob"], PeerError)
    assert "alice" in str(result["bob"])
    assert not (tmp_path / "alice" / "output.csv").exists() and not (tmp_path / "bob" / "output.csv").exists()


def test_keep_first_uses_and_outputs_the_first_row_of_each_key(tmp_path: Path) -> None:
    alice = [{"id": k, "age": str(i)} for i, k in enumerate(["a", "b", "a", "c", "b", "a"])]
    bob = [{"uid": k, "score": "s"} for k in ["a", "b", "z"]]
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), duplicates="keep-first")
    out_a = output(tmp_path, "alice")
    assert sorted((r["id"], r["age"]) for r in out_a) == [("a", "0"), ("b", "1")]
    assert [r["id"] for r in out_a] == [r["uid"] for r in output(tmp_path, "bob")]
    assert result["alice"]["rows_dropped_duplicates"] == 3
    assert result["alice"]["unique_keys"] == 3


def test_keep_all_with_two_receivers_is_the_sql_join_aligned_row_by_row(tmp_path: Path) -> None:
    rng = random.Random(5)
    alice = [{"id": f"k{rng.randint(0, 30)}", "age": str(i)} for i in range(120)]
    bob = [{"uid": f"k{rng.randint(10, 40)}", "score": str(i)} for i in range(100)]
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), duplicates="keep-all")
    out_a, out_b = output(tmp_path, "alice"), output(tmp_path, "bob")
    expected = Counter(
        (a["id"], a["age"], b["score"]) for a, b in itertools.product(alice, bob) if a["id"] == b["uid"]
    )
    assert len(out_a) == len(out_b) == sum(expected.values())
    assert all(a["id"] == b["uid"] for a, b in zip(out_a, out_b, strict=True))
    assert Counter((a["id"], a["age"], b["score"]) for a, b in zip(out_a, out_b, strict=True)) == expected
    assert result["alice"]["intersection_rows"] == sum(1 for a in alice if a["id"] in {b["uid"] for b in bob})


def test_keep_all_with_one_receiver_outputs_every_matching_row_once(tmp_path: Path) -> None:
    alice = [{"id": k, "age": str(i)} for i, k in enumerate(["a", "a", "b", "c", "a"])]
    bob = [{"uid": k, "score": "s"} for k in ["a", "a", "c", "d"]]
    result = run_pair(
        tmp_path,
        two_inputs(tmp_path, alice, bob, ["id"], ["uid"]),
        duplicates="keep-all",
        receivers=["alice"],
    )
    out_a = output(tmp_path, "alice")
    assert sorted(r["age"] for r in out_a) == ["0", "1", "3", "4"]
    assert [r["age"] for r in out_a if r["id"] == "a"] == ["0", "1", "4"]  # input order within a key
    assert not (tmp_path / "bob" / "output.csv").exists()
    assert result["bob"]["receiver"] is False and result["bob"]["intersection_keys"] is None


def test_empty_intersection(tmp_path: Path) -> None:
    alice = [{"id": f"a{i}", "age": "1"} for i in range(50)]
    bob = [{"uid": f"b{i}", "score": "1"} for i in range(40)]
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]))
    assert output(tmp_path, "alice") == [] and output(tmp_path, "bob") == []
    assert (tmp_path / "alice" / "output.csv").read_text().strip() == '"id","age"'
    assert result["alice"]["intersection_keys"] == 0


def test_an_empty_input(tmp_path: Path) -> None:
    bob = [{"uid": f"b{i}", "score": "1"} for i in range(40)]
    result = run_pair(tmp_path, two_inputs(tmp_path, [], bob, ["id"], ["uid"]))
    assert output(tmp_path, "alice") == [] and output(tmp_path, "bob") == []
    assert result["alice"]["rows"] == 0 and result["bob"]["peer_unique_keys"] == 0


def test_missing_key_column_names_party_and_column(tmp_path: Path) -> None:
    alice = [{"id": "a", "age": "1"}]
    bob = [{"uid": "a", "score": "1"}]
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["user_id"], ["uid"]), peer_wait_s=2)
    assert isinstance(result["alice"], InputError)
    message = str(result["alice"])
    assert message.startswith("inputs.alice.keys: column 'user_id' not found in file ")
    assert "(columns: id, age)" in message
    assert isinstance(result["bob"], PeerError) and "peer alice" in str(result["bob"])
    assert not list((tmp_path / "alice").glob("*output*")) and not list((tmp_path / "bob").glob("*output*"))


def test_left_join_keeps_every_row_matched_first_and_aligned(tmp_path: Path) -> None:
    alice, bob = random_tables(seed=3, n_alice=200, n_bob=150, universe=400)
    run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), join="left")
    out_a, out_b = output(tmp_path, "alice"), output(tmp_path, "bob")
    expected = {r["id"] for r in alice} & {r["uid"] for r in bob}
    assert len(out_a) == len(alice) and len(out_b) == len(bob)
    assert list(out_a[0]) == ["id", "age", MATCH_COLUMN]
    matched_a = [r["id"] for r in out_a if r[MATCH_COLUMN] == "true"]
    matched_b = [r["uid"] for r in out_b if r[MATCH_COLUMN] == "true"]
    assert matched_a == matched_b and set(matched_a) == expected
    assert [r[MATCH_COLUMN] for r in out_a] == ["true"] * len(expected) + ["false"] * (
        len(alice) - len(expected)
    )
    unmatched = [r["id"] for r in alice if r["id"] not in expected]
    assert [r["id"] for r in out_a[len(expected) :]] == unmatched  # input order


def test_one_receiver_only_that_party_learns_the_result(tmp_path: Path) -> None:
    alice, bob = random_tables(seed=9, n_alice=100, n_bob=100, universe=150)
    result = run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), receivers=["bob"])
    expected = {r["id"] for r in alice} & {r["uid"] for r in bob}
    assert {r["uid"] for r in output(tmp_path, "bob")} == expected
    assert not (tmp_path / "alice" / "output.csv").exists()
    assert result["alice"]["intersection_rows"] is None and result["alice"]["output"] is None
    assert json.loads((tmp_path / "alice" / "result.json").read_text())["receiver"] is False
    assert result["bob"]["intersection_keys"] == len(expected)


def test_parquet_int_keys_meet_csv_text_keys_and_nulls_never_match(tmp_path: Path) -> None:
    parquet = tmp_path / "alice.parquet"
    pq.write_table(
        pa.table({"id": pa.array([1, 2, None, 4, 5], pa.int64()), "v": ["a", "b", "c", "d", "e"]}), parquet
    )
    bob = [{"uid": k, "score": "s"} for k in ["2", "4", "9", ""]]
    inputs = {
        "alice": {"path": str(parquet), "keys": ["id"], "output_path": "out.parquet"},
        "bob": {"path": write_csv(tmp_path / "bob.csv", ["uid", "score"], bob), "keys": ["uid"]},
    }
    result = run_pair(tmp_path, inputs, join="left")
    out_a = pq.read_table(tmp_path / "alice" / "out.parquet")
    matched = out_a.filter(out_a.column(MATCH_COLUMN)).column("id").to_pylist()
    assert sorted(matched) == [2, 4]
    assert None in out_a.column("id").to_pylist()  # the null-key row is kept, unmatched
    assert result["alice"]["rows_null_key"] == 1
    assert [r["uid"] for r in output(tmp_path, "bob") if r[MATCH_COLUMN] == "true"] == [
        str(v) for v in out_a.column("id").to_pylist()[:2]
    ]


def test_parties_with_different_configs_refuse_each_other(tmp_path: Path) -> None:
    alice, bob = random_tables(seed=1, n_alice=20, n_bob=20, universe=30)
    result = run_pair(
        tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), configs={"bob": {"join": "left"}}
    )
    assert isinstance(result["alice"], ProtocolMismatch) or isinstance(result["bob"], ProtocolMismatch)
    for party in PARTIES:
        assert isinstance(result[party], PeerError)
        assert not (tmp_path / party / "output.csv").exists()


@pytest.mark.parametrize("receivers", [["alice"], ["alice", "bob"]])
def test_stale_output_from_an_earlier_attempt_is_removed(tmp_path: Path, receivers: list[str]) -> None:
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "output.csv").write_text("stale\n")
    alice, bob = random_tables(seed=2, n_alice=10, n_bob=10, universe=15)
    run_pair(tmp_path, two_inputs(tmp_path, alice, bob, ["id"], ["uid"]), receivers=receivers)
    assert (tmp_path / "bob" / "output.csv").exists() == ("bob" in receivers)
