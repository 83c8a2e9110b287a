"""`accord data add/list/head` against a real node, and an engine reading its input through DataMesh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, eventually


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "alice", "alice")
    n.start()
    yield n
    n.stop()


def test_register_list_head(node: NodeProcess, tmp_path: Path) -> None:
    table = tmp_path / "customers.csv"
    table.write_text("id,age,city\n1,34,Paris\n2,51,Lyon\n3,27,Nice\n")
    added = node.cli("data", "add", "customers", "--path", str(table))
    assert added.returncode == 0, added.stderr
    listed = node.cli("data", "list")
    assert listed.returncode == 0 and "customers" in listed.stdout
    head = node.cli("data", "head", "customers", "-n", "2")
    assert head.returncode == 0, head.stderr
    assert "Paris" in head.stdout and "Nice" not in head.stdout
    data = node.client.get("DomainData", "customers")
    assert [c["name"] for c in data["spec"]["columns"]] == ["id", "age", "city"]
    again = node.cli("data", "add", "customers", "--path", str(table))
    assert again.returncode == 1 and "[11502]" in again.stderr
    missing = node.cli("data", "add", "nope", "--path", str(tmp_path / "missing.csv"))
    assert missing.returncode == 1 and "[11501]" in missing.stderr


def test_node_serves_datamesh_to_engines(node: NodeProcess) -> None:
    info = node.client.node_info()
    assert info["modules"].get("datamesh") == "running"
    eventually(lambda: node.client.get("DomainDataSource", "default-data-source"), what="default source")
