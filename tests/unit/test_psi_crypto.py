"""Hash-to-point and X25519 masking: the algebra the protocol relies on, and the worker pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from accord.engines.psi.crypto import (
    POINT_SIZE,
    InvalidPoint,
    MaskKey,
    hash_multi_keys,
    hash_prefix,
    hash_single_keys,
    new_scalar,
)
from accord.engines.psi.errors import ProtocolMismatch
from accord.engines.psi.workers import Masker, cgroup_cpu_quota, default_workers


def test_masking_commutes() -> None:
    a, b = MaskKey(new_scalar()), MaskKey(new_scalar())
    points = hash_single_keys(hash_prefix("t"), [f"user-{i}" for i in range(50)])
    assert a.mask(b.mask(points)) == b.mask(a.mask(points))
    assert a.mask(points) != b.mask(points)


def test_equal_keys_meet_and_different_keys_do_not() -> None:
    a, b = MaskKey(new_scalar()), MaskKey(new_scalar())
    prefix = hash_prefix("t")
    alice = a.mask(hash_single_keys(prefix, ["x", "y", "z"]))
    bob = b.mask(hash_single_keys(prefix, ["y", "w"]))
    alice_double = {b.mask(alice)[i : i + POINT_SIZE] for i in range(0, 3 * POINT_SIZE, POINT_SIZE)}
    bob_double = [a.mask(bob)[i : i + POINT_SIZE] for i in range(0, 2 * POINT_SIZE, POINT_SIZE)]
    assert [p in alice_double for p in bob_double] == [True, False]


def test_hash_is_domain_separated_by_task_and_unambiguous() -> None:
    assert hash_single_keys(hash_prefix("t1"), ["k"]) != hash_single_keys(hash_prefix("t2"), ["k"])
    prefix = hash_prefix("t")
    assert hash_multi_keys(prefix, [["ab"], ["c"]]) != hash_multi_keys(prefix, [["a"], ["bc"]])
    # a one-column multi-key hash is the single-key hash: the fast path changes nothing
    assert hash_multi_keys(prefix, [["k1", "k2"]]) == hash_single_keys(prefix, ["k1", "k2"])


def test_small_order_points_are_rejected() -> None:
    with pytest.raises(InvalidPoint):
        MaskKey(new_scalar()).mask(bytes(POINT_SIZE))


def test_ragged_batches_are_rejected() -> None:
    with pytest.raises(ProtocolMismatch, match="not a multiple"):
        MaskKey(new_scalar()).mask(b"\x01" * 33)


def test_worker_pool_matches_inline_masking_in_order() -> None:
    scalar = new_scalar()
    points = os.urandom(POINT_SIZE * 300)
    expected = MaskKey(scalar).mask(points)
    with Masker(scalar, 2, chunk_points=64) as pool:
        assert pool.submit(points).result(timeout=60) == expected
        assert pool.submit(b"").result(timeout=60) == b""
    with Masker(scalar, 0) as inline:
        assert inline.submit(points).result() == expected


def test_worker_errors_come_back_typed() -> None:
    with Masker(new_scalar(), 1) as pool, pytest.raises(InvalidPoint):
        pool.submit(bytes(POINT_SIZE)).result(timeout=60)


def test_default_workers_follow_affinity() -> None:
    assert 1 <= default_workers() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("proc", "files", "expected"),
    [
        (
            "1:cpu,cpuacct:/job\n",
            {"cpu,cpuacct/job/cpu.cfs_quota_us": "150000", "cpu,cpuacct/job/cpu.cfs_period_us": "100000"},
            1.5,
        ),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("0::/job\n", {"job/cpu.max": "200000 100000"}, 2.0),
        ("0::/job\n", {"job/cpu.max": "max 100000"}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, proc: str, files: dict[str, str], expected: float | None) -> None:
    (tmp_path / "cgroup").write_text(proc)
    for name, content in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    assert cgroup_cpu_quota(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == expected
