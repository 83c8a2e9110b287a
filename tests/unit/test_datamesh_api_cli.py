"""`accord data add | list | head` through the CLI and the SDK, against the data routes on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import Depends, FastAPI
from typer.testing import CliRunner, Result

from accord.api import data as data_api
from accord.api.auth import require_node_token
from accord.api.errors import install_error_handlers
from accord.api.testing import ServerThread, bind_loopback
from accord.cli.data import app as data_app
from accord.client import AccordClient
from accord.client.data import add_data, get_data, head_data, list_data
from accord.errors import AlreadyExists, ErrorCode, InvalidArgument, NotFound
from accord.services.data import DataService
from accord.settings import NodeSettings
from accord.store.memory import MemoryStore

TOKEN = "data-test-token"
CSV = "id,name,age\n001,[bold]ann[/bold],31\n002,bob,\n003,cy,47\n"


class Node:
    def __init__(self, directory: Path, server: ServerThread) -> None:
        self.dir = directory
        self.server = server

    def client(self) -> AccordClient:
        return AccordClient(self.server.url, TOKEN)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    directory = tmp_path / "alice"
    sock = bind_loopback()
    settings = NodeSettings(domain="alice", dir=directory.resolve(), api_port=int(sock.getsockname()[1]))
    directory.mkdir(parents=True)
    (directory / "accord.toml").write_text(settings.to_toml())
    settings.token_path.write_text(TOKEN + "\n")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(
        data_api.build_router(DataService(MemoryStore(), settings)),
        dependencies=[Depends(require_node_token(TOKEN))],
    )
    with ServerThread(app, sock=sock) as server:
        yield Node(directory, server)


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    return path


def accord_data(node: Node, *args: str) -> Result:
    return CliRunner().invoke(data_app, [*args, "--dir", str(node.dir)])


def test_add_list_head_through_the_cli(node: Node, csv_file: Path) -> None:
    added = accord_data(node, "add", "people", "--path", str(csv_file), "--type", "id=str")
    assert added.exit_code == 0, added.stderr
    assert added.stdout.strip() == (
        "data/people registered: 3 columns (id:str, name:str, age:int64), csv in default-data-source "
        "at people.csv"
    )
    listed = accord_data(node, "list")
    assert listed.exit_code == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "FORMAT", "COLUMNS", "DATASOURCE", "VENDOR", "AGE"]
    assert row.split()[:3] == ["people", "csv", "id:str,"]
    head = accord_data(node, "head", "people", "-n", "2")
    assert head.exit_code == 0, head.stderr
    lines = head.stdout.strip().splitlines()
    assert lines[0].split() == ["id", "name", "age"]
    assert lines[1].split() == ["001", "[bold]ann[/bold]", "31"]  # user data, never rich markup
    assert lines[2].split() == ["002", "bob"]
    as_json = json.loads(accord_data(node, "head", "people", "-o", "json").stdout)
    assert as_json["rows"][2] == ["003", "cy", 47]
    assert json.loads(accord_data(node, "list", "-o", "json").stdout)["items"][0]["meta"]["name"] == "people"


def test_cli_errors_name_the_problem(node: Node, csv_file: Path, tmp_path: Path) -> None:
    assert accord_data(node, "list").stdout.strip() == "no DomainData objects found"
    missing = accord_data(node, "add", "x", "--path", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error [11501]: file ") and "nope.csv" in missing.stderr
    assert accord_data(node, "add", "people", "--path", str(csv_file)).exit_code == 0
    taken = accord_data(node, "add", "people", "--path", str(csv_file))
    assert taken.exit_code == 1 and taken.stderr.startswith("error [11502]:")
    unknown = accord_data(node, "head", "ghost")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error [11501]: DomainData 'ghost' not found")
    bad_type = accord_data(node, "add", "y", "--path", str(csv_file), "--type", "id")
    assert bad_type.exit_code == 2 and "COLUMN=TYPE" in bad_type.stderr


def test_sdk_and_routes(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"k": ["a", "b", "c"], "v": [1.5, 2.5, None]}), path)
    with node.client() as client:
        assert list_data(client) == []
        doc = add_data(client, "tp", path)
        assert doc["spec"]["file_format"] == "PARQUET"
        assert get_data(client, "tp")["spec"]["columns"][1] == {
            "name": "v",
            "type": "float64",
            "comment": "",
            "not_nullable": False,
        }
        assert head_data(client, "tp", rows=2)["rows"] == [["a", 1.5], ["b", 2.5]]
        with pytest.raises(AlreadyExists):
            add_data(client, "tp", path)
        with pytest.raises(NotFound):
            head_data(client, "ghost")
        with pytest.raises(InvalidArgument) as err:
            add_data(client, "x", path, "xlsx")
        assert err.value.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.DATA_INVALID)
    response = httpx.get(f"{node.server.url}/v1/data/tp/head", params={"rows": 0}, headers={"Token": TOKEN})
    assert response.status_code == 400 and "rows" in response.json()["message"]
    assert httpx.get(f"{node.server.url}/v1/data").status_code == 401
